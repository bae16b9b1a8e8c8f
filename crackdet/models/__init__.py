"""Models: backbone construction and weight resolution, and the LightningModule."""
