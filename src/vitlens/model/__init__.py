"""The ViT and what belongs to it: vit (the model, its optimizer groups and FLOPs), layers,
record (the model file the train stage writes), trained (loading it), pixels (the served
uint8-in, probabilities-out module)."""
