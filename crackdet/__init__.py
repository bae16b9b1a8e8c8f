"""crackdet: concrete crack classification with a frozen ResNet18 backbone."""
