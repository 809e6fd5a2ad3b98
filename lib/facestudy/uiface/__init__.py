"""facestudy.uiface — chapter 2, *UIFace* (Lin et al., ICLR 2025): identity-conditioned diffusion for
synthetic face-recognition data, two-stage sampling, adaptive stage partition and attention injection.

Modules: :mod:`.autoencoder` (the project's f4 face autoencoder, the latent space), :mod:`.model` (generator +
identity context), :mod:`.train` (the one diffusion trainer),
:mod:`.attention` (injection processors, cross-attention maps), :mod:`.sampling` (DDPM schedule, DDIM
modes), :mod:`.metrics` (identity / diversity / recall, context filter), :mod:`.pipeline` (the chapter's
data, FR-embedding and downstream-training glue).
"""
from .attention import (
                        AttentionControl,
                        UIFaceAttnProcessor,
                        attention_control,
                        cross_attention_map,
                        map_change,
                        match_statistics,
)
from .autoencoder import AutoencoderConfig, AutoencoderHistory, FaceAutoencoder, train_autoencoder
from .metrics import (
                        farthest_point,
                        feature_diversity,
                        filter_contexts,
                        genuine_impostor,
                        improved_recall,
                        intra_class_similarity,
                        lpips_like_distance,
                        pixel_diversity,
)
from .model import ContextEncoder, GeneratorConfig, UIFaceGenerator, images_to_model, model_to_images, resize_uint8
from .sampling import MODES, DDPMSchedule, SamplerConfig, SampleResult, adaptive_switch_index, sample
from .train import EMA, DiffusionHistory, train_diffusion

__all__ = [
    "AttentionControl", "UIFaceAttnProcessor", "attention_control", "cross_attention_map", "map_change",
    "match_statistics", "farthest_point", "feature_diversity", "filter_contexts", "genuine_impostor",
    "improved_recall", "intra_class_similarity", "lpips_like_distance", "pixel_diversity", "ContextEncoder",
    "GeneratorConfig", "UIFaceGenerator", "images_to_model", "model_to_images", "resize_uint8", "MODES",
    "DDPMSchedule", "SampleResult", "SamplerConfig", "adaptive_switch_index", "sample", "EMA",
    "DiffusionHistory", "train_diffusion", "AutoencoderConfig", "AutoencoderHistory", "FaceAutoencoder",
    "train_autoencoder",
]
