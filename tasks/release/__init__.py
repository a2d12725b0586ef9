"""Using trained models: load any checkpoint as a plain backbone, export it to safetensors."""
