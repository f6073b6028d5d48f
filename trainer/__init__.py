"""The training pipeline: corpus -> tokenizer -> pretraining -> evaluation -> ONNX export."""
