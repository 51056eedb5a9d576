"""An example medagent plugin: a weightless CURB-65 calculator and a ResNet-18 pneumonia classifier.

Importing this package imports neither torch nor torchvision: the classifier imports them when it loads."""
