"""DeepLab and FCN semantic segmentation in plain PyTorch: data, models, CRF, metrics, schedules."""
__version__ = "0.1.0"
