"""Inference on images of any size: the network's scores (`predict`), the scale it sees them at
(`sizing`), windows over frames too large for one pass (`tiles`), masks with the dense CRF
(`masks`), and the band-by-band resize that keeps full-size maps out of memory (`resample`)."""
from .masks import Masks, crf_scale, image_masks, label_map, label_maps_on_device, most_likely
from .predict import (OUT_OF_MEMORY, coarse_scores, halving_on_oom, predict_coarse, predict_probabilities,
                      ran_out_of_memory)
from .sizing import SCALE_TOLERANCE, SCALES, bounded_size, inference_size, resize_images
from .tiles import Tiling, crf_tiles, tile_windows, tiled_coarse_scores

__all__ = ["Masks", "OUT_OF_MEMORY", "SCALES", "SCALE_TOLERANCE", "Tiling", "bounded_size", "coarse_scores", "crf_scale",
           "crf_tiles", "halving_on_oom", "image_masks", "inference_size", "label_map", "label_maps_on_device", "most_likely",
           "predict_coarse", "predict_probabilities", "ran_out_of_memory", "resize_images", "tile_windows", "tiled_coarse_scores"]
