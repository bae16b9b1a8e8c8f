"""The values the model settings accept, importable without torch.

The start-up checks (crackdet.cli.validation) run before a job imports torch; the modules that
act on these settings take their names from here.
"""

#: `model.backbone` when none is given: the reference notebook's network.
DEFAULT_BACKBONE = "resnet18"
#: `model.backbone_runtime`: what runs the frozen backbone (crackdet.models.runtime).
RUNTIMES = ("auto", "eager", "compile", "onnxruntime", "openvino")
#: `model.backbone_precision`.
PRECISIONS = ("fp32", "bf16")
#: `model.bn_mode`: BatchNorm statistics kept as the weights have them, or updated by training.
BN_MODES = ("frozen", "train")
#: `model.trainable`: which parameters training updates (crackdet.models.trainable).
TRAINABLE = ("head", "last_stage", "all")
