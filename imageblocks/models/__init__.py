"""Models: pretrained bodies by name (`backbones`) and the pooling head put on top (`head`)."""
