"""Image encoder: medical image reading, DenseNet-121 training, 1024-d image codes."""
