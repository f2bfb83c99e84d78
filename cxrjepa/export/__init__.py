"""``cxrjepa export``: an encoder as safetensors (timm), ONNX, TorchScript and a Hugging Face folder, each checked."""
