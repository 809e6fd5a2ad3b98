"""Profiles: one notebook parameter (``profile``) mapped to concrete sizes, per chapter, in ONE table.

``smoke``   tests; each chapter <= 60 s on 2 CPU cores, synthetic and tiny.
``default`` the book on a 2-core CPU; each chapter <= 8 min.
``gpu``     a workshop GPU (bigger models, longer training).
``paper``   the paper's protocol, given the real datasets / checkpoints a user supplies.

Every chapter's sizes live in :data:`TABLE` below; notebooks never hard-code sizes. A notebook calls
:func:`resolve` (through :func:`facestudy.runtime.start`) before doing any work, so an unknown profile or
an unknown override fails at once with the list of valid choices.
"""
from __future__ import annotations

from typing import Any

from .errors import ParameterError

PROFILES: tuple[str, ...] = ("smoke", "default", "gpu", "paper")


class Config(dict):
    """A resolved profile: a dict whose keys are also attributes (``cfg.n_identities``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


# ---------------------------------------------------------------------------------------------------
# THE table. One entry per chapter: "base" holds keys shared by all profiles, then one dict per profile
# overriding them. Every key a profile may set must appear in "base" (that is how unknown overrides are
# caught). Keep comments next to the keys: they are the documentation of the sizes.
# ---------------------------------------------------------------------------------------------------
TABLE: dict[str, dict[str, dict[str, Any]]] = {
    "00_setup": {
        "base": {"n_render": 16, "image_size": 112},
        "smoke": {"n_render": 8},
        "default": {},
        "gpu": {},
        "paper": {},
    },
    "00a_faceworld": {
        "base": {
            "image_size": 112,  # rendered size (px)
            "n_grid": 24,  # identities in the identity grid
            "lattice_attributes": ["yaw", "pitch", "roll", "light_azimuth", "light_elevation", "ambient", "smile",
                                   "mouth_open", "eyes_closed", "age", "hair_color", "eyeglasses", "sunglasses",
                                   "beard", "moustache", "hat", "mask", "background", "brightness", "contrast",
                                   "hue", "blur", "resolution"],  # one lattice row per attribute
            "n_overlay": 12,  # random-nuisance renders with landmark overlay
            "n_identities": 40,  # make_faceset demo: identities
            "n_per_identity": 4,  # make_faceset demo: images per identity
            "n_detect": 120,  # near-frontal renders given to MTCNN
            "n_verify_identities": 80,  # identities for the MobileFaceNet verification check
            "n_verify_per_identity": 4,  # images per identity (near-frontal, mild light changes)
            "n_pairs": 600,  # verification pairs (half same, half different)
            "speed_images": 64,  # renderer speed probe: images per timed batch (default nuisance)
            "speed_repeats": 5,  # timed batches; the page reports the median rate
            "realism": True,  # run the MTCNN / MobileFaceNet checks when their files are present
            "fr_train_ids": 300,  # world-trained FR check: training identities
            "fr_per_id": 20,  # training renders per identity (random nuisance)
            "fr_test_ids": 100,  # held-out identities (identity_offset = fr_train_ids)
            "fr_test_per_id": 5,  # renders per held-out identity
            "fr_pairs": 600,  # held-out verification pairs (10 identity-disjoint folds)
            "fr_size": 64,  # render / input size (px) of the small model
            "fr_width": 16,  # smallcnn base width
            "fr_embedding_dim": 128,  # embedding size
            "fr_scale": 32.0,  # ArcFace scale s
            "fr_margin": 0.3,  # ArcFace additive angular margin m2 (rad)
            "fr_epochs": 12,  # training epochs
            "fr_flip": True,  # random horizontal flips during training (train.random_hflip)
            "fr_batch_size": 64,  # training batch size
            "fr_lr": 0.1,  # SGD learning rate (cosine schedule, 1 warm-up epoch)
        },
        "smoke": {"n_grid": 8, "lattice_attributes": ["yaw", "eyeglasses", "age"], "n_overlay": 4,
                  "speed_images": 16, "speed_repeats": 1,
                  "n_identities": 3, "n_per_identity": 2, "n_detect": 8, "n_verify_identities": 6,
                  "n_verify_per_identity": 2, "n_pairs": 24,
                  "fr_train_ids": 8, "fr_per_id": 4, "fr_test_ids": 6, "fr_test_per_id": 2, "fr_pairs": 24,
                  "fr_size": 32, "fr_width": 8, "fr_embedding_dim": 32, "fr_epochs": 1, "fr_batch_size": 16},
        "default": {},
        "gpu": {"n_detect": 400, "n_verify_identities": 300, "n_pairs": 3000},
        "paper": {"n_detect": 1000, "n_verify_identities": 1000, "n_verify_per_identity": 6, "n_pairs": 6000},
    },
    "00b_models": {
        "base": {"pairs_per_fold": 600,  # LFW View-2 pairs per fold (600 = the full protocol, 6000 pairs)
                 "batch_size": 128,  # embedding batch size
                 "synthetic_identities": 40,  # faceworld fallback size when LFW / weights are absent
                 "port_delta": 1.0},  # ms1m_lfw: our port "matches" the published 99.47 % within this many points
        "smoke": {"pairs_per_fold": 4, "synthetic_identities": 10},
        "default": {},
        "gpu": {"batch_size": 512},
        "paper": {},
    },
    # --- chapter sections below are owned by each chapter's subpackage -------------------------------
    "01_geometry": {
        "base": {
            "real_data": True,  # use CelebA-10k / CelebA-id299 / LFW when present (else the synthetic world, announced)
            "real_models": ["mobilefacenet-ms1m", "mobilefacenet-casia"],  # pretrained models (facestudy.models)
            "paper_checkpoints": [],  # paper profile: manifest names of user-supplied FaceNet/ArcFace/AdaFace
            "celeba_limit": 2000,  # CelebA-10k images embedded for the KS test (whole identities; 0 = all 10k);
            #                        the attribute entropies always use all 10k labels (no embedding needed)
            "world_macro_ids": 150,  # synthetic fallback: identities x images for the macroscale test
            "world_macro_per_id": 3,
            "n_max": 500,  # KS: images per modality, n = min(n_max, |X+|, |X-|) (paper: 500)
            "n_boot": 200,  # identity-bootstrap replicates of the named attributes' KS intervals
            "ks_equal_n": 30,  # KS-entropy correlation: KS at one common n per modality (prevalence-free null) ...
            "ks_equal_reps": 30,  # ... averaged over this many random draws
            "probe_limit": 1000,  # images used by the 5-fold logistic probes
            "heads": ["softmax", "arcface", "cosface", "adaface"],  # loss families trained on the frozen trunk
            "seeds": [0, 1, 2],  # training seeds per loss family (the unit of G3)
            "train_data": "celeba_id299",  # celeba_id299 | world: the heads' training identities
            "train_limit": 2000,  # training images (whole identities; 0 = all 6,263)
            "train_world_ids": 60,  # when train_data = world: identities x images rendered at 112 px
            "train_world_per_id": 10,
            "head_epochs": 12,  # epochs of each head (tail: GDC + FC + BN, ~92 k parameters)
            "batch_size": 128,
            "lr": 0.1,
            "world_ids": 12,  # synthetic lattices: identities, curves per attribute, render size
            "world_curves": 30,
            "world_size": 112,
            "world_attributes": ["yaw", "age", "hair_colour", "illumination", "expression",
                                 "brightness", "contrast", "hue"],  # the paper's 5 high-level + 3 low-level
            "real_ids": 12,  # real-face lattices (CelebA-id299 photos, image operations): identities, curves
            "real_curves": 30,
            "real_attributes": ["illumination", "brightness", "contrast", "hue"],  # 1 high-level (relit) + 3 low
            "k": 10,  # kNN neighbourhood of the energy (paper: 10)
            "g2_min_auc": 0.9,  # G2 precondition: the model tells the lattice identities apart (genuine/impostor AUC)
            "ft_attribute": "hue",  # fine-tuning validation: augmented attribute
            "ft_seeds": [0, 1, 2, 3, 4],  # fine-tunes per arm (augment / control), the unit of G4
            "ft_ids": 10,  # lattice identities whose energies G4 compares
            "ft_epochs": 3,
            "ft_lr": 0.01,
            "ft_p": 0.8,  # probability that a training sample is replaced by its hue-shifted copy
            "tsne_n": 600,  # CelebA images in the 2-D projection figure
            "lfw_pairs_per_fold": 30,  # LFW pairs per fold for the models' / heads' verification accuracy
            # G3f: whole networks per loss family (pretrained MobileFaceNet, tail re-initialised, every layer trained)
            "full_networks": False, "full_seeds": [0, 1, 2], "full_epochs": 8, "full_batch": 128, "full_lr": 0.01,
            "full_max_steps": 0,  # 0 = all epochs (a rehearsal caps the steps)
        },
        "smoke": {
            "real_data": False, "real_models": ["mobilefacenet-ms1m"], "n_max": 40, "n_boot": 20,
            "ks_equal_n": 5, "ks_equal_reps": 5,
            "world_macro_ids": 20, "world_macro_per_id": 2, "probe_limit": 40,
            "heads": ["softmax", "arcface"], "seeds": [0, 1, 2], "train_data": "world", "train_world_ids": 8,
            "train_world_per_id": 4, "head_epochs": 2, "batch_size": 16,
            "world_ids": 3, "world_curves": 4, "world_size": 112, "world_attributes": ["yaw", "hue"],
            "real_ids": 2, "real_curves": 4, "real_attributes": ["illumination", "brightness"], "k": 3,
            "ft_seeds": [0, 1, 2], "ft_ids": 3, "ft_epochs": 1, "tsne_n": 30, "lfw_pairs_per_fold": 4,
            "full_networks": True, "full_seeds": [0], "full_epochs": 1, "full_batch": 16, "full_max_steps": 2,
        },
        "default": {},
        "gpu": {
            "celeba_limit": 0, "n_max": 500, "n_boot": 500, "probe_limit": 10000, "train_limit": 0,
            "seeds": [0, 1, 2, 3, 4], "head_epochs": 30, "world_ids": 30, "world_curves": 100, "real_ids": 40,
            "real_curves": 100, "ft_seeds": list(range(10)), "ft_ids": 30, "ft_epochs": 6, "tsne_n": 3000,
            "lfw_pairs_per_fold": 300, "full_networks": True,
        },
        "paper": {
            "celeba_limit": 0, "n_max": 500, "n_boot": 500, "probe_limit": 10000, "train_limit": 0,
            "paper_checkpoints": ["arcface_r50", "arcface_r100", "adaface_r100"],
            "seeds": [0, 1, 2, 3, 4], "head_epochs": 30, "world_ids": 50, "world_curves": 300, "real_ids": 100,
            "real_curves": 300, "ft_seeds": list(range(10)), "ft_ids": 50, "ft_epochs": 6, "tsne_n": 5000,
            "lfw_pairs_per_fold": 300, "full_networks": True,
        },
    },
    "02_uiface": {
        "base": {
            # training data: the real aligned faces present (CelebA-id299 + CelebA-10k, 16,256 faces of 5,688
            # identities), else the synthetic world; gate_identities CelebA-id299 identities are held out
            "train_sets": ["celeba_id299", "celeba10k"],
            "train_limit": 0,  # images read per set (0 = all)
            "train_images": 0,  # training faces kept in all (0 = all)
            "train_per_identity": 0,  # at most this many faces per identity (0 = all)
            "gate_identities": 40,  # held-out real identities the competence gate conditions on
            # first stage: the project's own f4 autoencoder (the paper's VQ-f4 weights are not redistributed):
            # 32 px -> latent_channels x 8 x 8; latent_channels = 0 would train the UNet on pixels
            "image_size": 32, "latent_channels": 8, "ae_channels": [32, 64], "ae_norm_groups": 8,
            "ae_steps": 1200, "ae_batch": 64, "ae_lr": 2e-3,
            "ae_latent_noise": 0.25,  # decoder trained on z + 0.25 std(z) noise: robust to the denoiser's errors
            # second stage: the ID-conditioned UNet in that latent (diffusers UNet2DConditionModel)
            "embed_dim": 128, "context_dim": 256, "n_tokens": 8, "token_dim": 64,
            "unet_channels": [32, 64, 64], "attn_levels": [False, True, True], "head_dim": 32,
            "norm_groups": 16,
            "cpd": 0.25,  # context partial dropout
            "p_empty": 0.2,  # learnable empty context probability
            # v-prediction + one cosine decay on a CPU budget (paper: eps, restarts)
            "prediction": "v_prediction", "lr_schedule": "cosine", "lr_warmup": 100,
            # gate AUC by denoiser steps (2026-11-30): 2000: 0.715 at w = 1; 5000: 0.816 at w = 1, 0.944 at the tuned
            # w = 6, where the O-Net takes 62 % of the samples for faces; 10000: 0.916 at the tuned w = 2, with 85 %
            # faces (1,163 s of training in make book's stage). The paper: 900k steps, batch 512, lr 1e-4
            "train_steps": 10000, "train_batch": 64, "lr": 1e-3,
            "use_ema": True,
            # sampling (DDIM, eta = 0); 25 steps on CPU to fit the budget (paper and gpu: 50)
            "ddim_steps": 25, "t0": 500, "sample_batch": 64,
            # classifier-free guidance w (eps = (1+w) eps_c - w eps_u; the paper: w = 1, its `paper` value here).
            # < 0: the chapter tunes w on LFW people (in neither the training faces nor the gate): the smallest w
            # of guidance_grid whose genuine-vs-impostor AUC reaches gate_auc (our small denoiser needs more
            # guidance than the paper's to put its identity into a face)
            "guidance": -1.0, "guidance_grid": [1.0, 2.0, 4.0, 6.0, 8.0], "guidance_identities": 24,
            "guidance_per_identity": 4,
            # adaptive threshold on d_t: < 0 = calibrate on our network (the th_quantile quantile of a pilot's
            # stage-1 d_t); the paper's 0.005 is a value on its own network (the paper profile keeps it)
            "th": -1.0, "th_quantile": 0.2,
            "n_candidates": 200,  # empty-context samples screened for synthetic identities
            "filter_threshold": 0.3,  # keep a candidate if its cosine to all kept ones is below this
            "n_identities": 32, "n_per_identity": 6,  # synthetic set per sampling mode (the gate uses the same k)
            "intervals": [[500, 1000], [0, 500], [0, 1000]],  # Fig. 2: identity only for lo <= t < hi
            "interval_identities": 20, "interval_per_identity": 6,
            # metrics
            "diversity_layers": ["conv1", "conv2_dw"], "recall_k": 10, "n_real_recall": 300,
            # downstream FR: the frozen real MobileFaceNet trunk + its tail re-initialised and trained (ArcFace)
            # on each set, evaluated on real LFW pairs at the generator's resolution
            "fr_epochs": 15, "fr_batch": 64, "fr_lr": 0.1, "lfw_per_fold": 50,
            # U4's unit: a freshly sampled set + the tail trained on it (>= 3 to test U4; 6: about 12 s a seed here)
            "fr_seeds": [0, 1, 2, 3, 4, 5],
            # claims: competence gate (genuine-vs-impostor AUC of generated faces under the real FR model, the
            # issue's target; real faces at 32 px give ~0.97) and U2's non-inferiority margin (FR-LPIPS units)
            "gate_auc": 0.9, "u2_delta": 0.01,
            # paper profile: user-supplied files (see the notebook)
            "generator_checkpoint": "", "autoencoder_checkpoint": "",
        },
        "smoke": {"train_sets": ["celeba_id299"], "train_limit": 400, "train_images": 96, "train_per_identity": 4,
                  "gate_identities": 3, "latent_channels": 4, "ae_channels": [8, 8], "ae_norm_groups": 4,
                  "ae_steps": 4, "ae_batch": 8,
                  "unet_channels": [8, 16], "attn_levels": [True, True], "head_dim": 8,
                  "norm_groups": 4, "n_tokens": 4, "token_dim": 16, "context_dim": 32, "image_size": 16,
                  "train_steps": 4, "train_batch": 8, "ddim_steps": 5, "n_candidates": 6, "n_identities": 2,
                  "n_per_identity": 3, "intervals": [[500, 1000], [0, 500]], "interval_identities": 2,
                  "interval_per_identity": 2, "recall_k": 2, "n_real_recall": 20, "lr_warmup": 1,
                  "fr_epochs": 1, "fr_batch": 4, "lfw_per_fold": 4, "fr_seeds": [0, 1],
                  "guidance_grid": [1.0, 2.0], "guidance_identities": 3, "guidance_per_identity": 2},
        "default": {},
        "gpu": {"image_size": 64, "ae_channels": [64, 128], "ae_norm_groups": 16, "ae_steps": 20000, "ae_batch": 128,
                "unet_channels": [64, 128, 128, 256], "attn_levels": [False, True, True, True], "head_dim": 32,
                "norm_groups": 32, "n_tokens": 32, "token_dim": 256, "train_steps": 30000, "train_batch": 64,
                "lr": 2e-4, "lr_warmup": 500, "ddim_steps": 50, "n_candidates": 1000, "n_identities": 200,
                "n_per_identity": 20,
                "interval_identities": 50, "interval_per_identity": 10, "sample_batch": 500,
                "fr_epochs": 30, "fr_batch": 128, "fr_lr": 0.1, "lfw_per_fold": 300, "fr_seeds": [0, 1, 2, 3, 4]},
        "paper": {"prediction": "epsilon", "lr_schedule": "restarts", "lr": 1e-4, "ddim_steps": 50, "th": 0.005,
                  "guidance": 1.0,
                  "image_size": 128, "latent_channels": 3, "n_tokens": 32, "token_dim": 256,
                  "n_candidates": 20000, "n_identities": 10000, "n_per_identity": 50, "sample_batch": 50,
                  "generator_checkpoint": "uiface/uiface_unet.ckpt",
                  "autoencoder_checkpoint": "uiface/vq-f4.ckpt", "lfw_per_fold": 600},
    },
    "03_kprpe": {
        "base": {
            # the face ViT (METHODS.md §1.1) at CPU scale: 64x64 input, patch 8 -> 8x8 = 64 tokens
            "image_size": 64, "patch": 8, "dim": 96, "depth": 4, "heads": 4, "mlp_ratio": 3.0,
            "embedding_dim": 128, "drop_path": 0.0,
            # training data: real identities (CelebA-id299, CelebA-10k ids with >= 2 images) + synthetic
            "id299_limit": 2500, "celeba10k_limit": 600, "synth_identities": 60, "synth_per_identity": 8,
            # AdaFace training (§1.6) with the §1.7 augmentation family, scaled down
            "epochs": 3, "batch_size": 64, "lr": 2e-3, "optimizer": "adamw", "warmup": 0.3,
            # §1.7 augmentation: AugmentSpec overrides ({} = the full gridsample_v1 + RandAugment recipe) and
            # P(next sample repeats the previous identity)
            "augment": {}, "repeat_prob": 0.1,
            # evaluation: LFW View-2 pairs kept per fold (balanced), three conditions
            "lfw_pairs_per_fold": 40, "lfw_folds": 10,  # folds of View 2 used (10 = the protocol; < 10: rehearsal)
            # ablations: keypoint subsets (5 = all, 3 = eyes + nose, 2 = eyes) and landmark noise alphas
            "keypoint_counts": [5, 2], "noise_alphas": [0.0, 0.025, 0.05, 0.1],
            # overhead measurement (K4)
            "overhead_batch": 32, "overhead_steps": 3, "overhead_repeats": 3,
            # paper profile: a user-supplied CVLface KP-RPE checkpoint, relative to the data root
            "paper_checkpoint": "",
            # design: "vit" = the pure face ViT above trained on pixels (gpu / paper); "hybrid" = the frozen
            # real MobileFaceNet trunk's 7x7 map as tokens + a small transformer (smoke / default, issue 16)
            "design": "vit",
            "seeds": [0, 1, 2],  # training seeds per arm (the unit of replication of every trained claim)
            "trunk": "mobilefacenet-ms1m", "trunk_layer": "blocks.14",  # 128 x 7 x 7 feature map
            "hybrid": {"dim": 64, "depth": 1, "heads": 4, "mlp_ratio": 2.0, "embedding_dim": 128},
            # AdamW as the supplement (Table 6); rpe_lr_mult scales the lr of the RPE module (iRPE and KP-RPE alike)
            "hybrid_recipe": {"epochs": 10, "batch_size": 128, "lr": 2e-3, "warmup": 1.0, "rpe_lr_mult": 1.0},
            "train_copies": 1,  # augmented copies per training image (besides the aligned one)
            "dose_strengths": [0.5, 1.0, 1.5, 2.0],  # misalignment ranges x today's (1 = the condition)
            "dose_sides": [28, 20, 14],  # low-resolution sweep: side in px of a 112-px face
            "noninferior_delta": 1.0,  # K1/K2/K3 non-inferiority margin (LFW accuracy points)
            "fusion_lfw_limit": 2000, "fusion_identities": 40,  # K5: LFW identities with >= 4 photos (72 in 2000)
        },
        "smoke": {"dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0, "embedding_dim": 32,
                  "id299_limit": 0, "celeba10k_limit": 0, "synth_identities": 8, "synth_per_identity": 4,
                  "epochs": 1, "batch_size": 32, "lfw_pairs_per_fold": 2, "noise_alphas": [0.0, 0.1],
                  "overhead_batch": 8, "overhead_steps": 1, "overhead_repeats": 1,
                  "design": "hybrid", "seeds": [0, 1], "hybrid": {"dim": 16, "depth": 1, "heads": 2,
                  "mlp_ratio": 2.0, "embedding_dim": 32}, "hybrid_recipe": {"epochs": 2, "batch_size": 32,
                  "lr": 1e-3, "warmup": 0.5}, "dose_strengths": [1.0, 2.0], "dose_sides": [14],
                  "fusion_lfw_limit": 300, "fusion_identities": 4},
        "default": {"design": "hybrid", "id299_limit": 1200, "celeba10k_limit": 400, "synth_identities": 0,
                    "lfw_pairs_per_fold": 20, "keypoint_counts": [5, 2], "noise_alphas": [0.0, 0.05, 0.1, 0.2]},
        "gpu": {"image_size": 112, "dim": 256, "depth": 8, "heads": 8, "mlp_ratio": 3.0, "embedding_dim": 256,
                "drop_path": 0.1, "id299_limit": 6263, "celeba10k_limit": 10000, "synth_identities": 1000,
                "synth_per_identity": 10, "epochs": 20, "batch_size": 256, "lr": 5e-4,
                "lfw_pairs_per_fold": 600, "keypoint_counts": [5, 3, 2], "overhead_batch": 128,
                "overhead_steps": 10},
        "paper": {"image_size": 112, "dim": 512, "depth": 24, "heads": 16, "mlp_ratio": 3.0,
                  "embedding_dim": 512, "drop_path": 0.1, "lfw_pairs_per_fold": 600,
                  "keypoint_counts": [5, 3, 2], "paper_checkpoint": "checkpoints/cvlface_vit_base_kprpe_webface4m.pt"},
    },
    "04_facemint": {
        "base": {
            "model": "mobilefacenet-ms1m",  # FR model whose templates and layers we study
            "checkpoint": "",  # paper profile: user-supplied checkpoint path (data_manifests/fr_checkpoints.yaml)
            "datasets": ["celeba10k", "utkface", "celeba_id299", "lfw"],  # real face sets embedded
            # images per real set (0 = all ~39.2 k: ~4 min of embedding on 2 cores, in make book's stage
            # `facestudy train 04_facemint saes`; the chapter then reads them from the shared embedding cache)
            "limit_per_set": 0,
            "synthetic_identities": 60,  # fallback synthetic world: identities ...
            "synthetic_per_identity": 6,  # ... and images per identity
            # train / discovery / validation, split by identity: 80 % of all ~39.2 k real faces = 31.4 k training
            # templates >= f2_min_templates (at 60 % it is 23.5 k); discovery and validation keep ~3.9 k each
            "split_fractions": [0.8, 0.1, 0.1],
            "border_threshold": 0.05,  # a face has a black alignment border above this fraction of its rim
            "border_max_gap": 0.1,  # F3 leaves out labels the border fraction alone detects (|AUROC - 0.5| > this)
            "min_positives": 10,  # a label is scored only with this many positives and negatives per held-out part
            "expansion": 4,  # SAE latents = expansion x 128 (chosen by the measured sweep; the paper: 65,536 on 512-d)
            "sweep_expansion": [2, 4, 8],  # expansion factors of the measured sweep (one gated SAE each)
            "sae_seeds": 3,  # SAE seeds per grid setting (the unit of replication of F1, F2, F3, F4)
            # Adam steps per SAE (~20 epochs of the 31.4 k training templates). 600 steps left the frontier moving
            # (gated l1=1: held-out EV 0.886 -> 0.942 at 2,400; measured 2026-11-30), so the grid trains 2,400
            # steps once in make book's stage and the chapter loads it (<cache>/saes)
            "sae_steps": 2400,
            "sae_lr": 3e-3,  # Adam learning rate of every SAE in the grid
            "sae_workers": 2,  # CPU processes training SAEs side by side (1 = one by one; the same SAEs either way)
            "batch_size": 256,  # templates per step
            # vanilla / gated: every 250 steps resample latents silent on the last 50 batches (0 = off)
            "resample_every": 250,
            "grid_l1": [1.0, 2.0, 4.0],  # vanilla lambda grid (log; inputs scaled to E||x|| = sqrt(d))
            "grid_gated_l1": [1.0, 3.0, 10.0],  # gated lambda grid (log)
            "grid_k": [16, 32, 64],  # TopK k grid
            "grid_l0": [0.1, 0.3, 1.0],  # JumpReLU lambda grid (L0 penalty; inputs scaled to E||x|| = sqrt(d))
            "jumprelu_bandwidth": 0.05,  # eps of the rectangle kernel (SAELens; the paper's 0.001 is for its scale)
            "jumprelu_theta0": 0.05,  # initial threshold
            "jumprelu_threshold_lr_mult": 10.0,  # lr multiplier of log(theta) (the paper trains ~10^5 steps)
            "ev_target": 0.9,  # "near-perfect" EV: best-model selection (discovery) and F2's test (validation)
            "f2_l0_fraction": 0.4,  # F2 reads EV at L0 = 0.4 d (the paper's sparsest "perfect" run: 206 / 512)
            "f1_sparse_max": 0.01,  # F1: the sparse mode must sit below this density
            "f4_min_active": 0.25,  # F4 needs the chosen latent active on this fraction of faces before the edit
            # scale preconditions of F1 / F2 (a scale artefact must read "untestable here", never a contradiction):
            # F1's sparse band (densities 1e-5 .. 1e-3) needs >= 10 images at density 1e-3; F2's "near-perfect"
            # held-out reconstruction is data-limited (the bar: SAEs on >= 30k real templates)
            "f1_min_templates": 10000, "f2_min_templates": 30000,
            # F1's own dictionary (gated, f1_l1): the paper's histogram comes from 65,536 latents with L0 ~ 200,
            # many more latents than active ones; at expansion 4 (512 latents, L0 ~ 120) no sparse band can form.
            # Measured 2026-11-30 on 31.4 k templates, 2,400 steps: expansion 4 Ashman's D 1.5, expansion 32 D 4.4
            "f1_expansion": 32, "f1_l1": 1.0,
            "main_kind": "gated",  # SAE family of F1, F3, F4 and act-max (the paper's predecessor uses a gated SAE)
            "n_show": 6,  # images per row in dataset-search grids
            "contrast_n": 20,  # images in each contrastive set
            # faces per edit (synthetic and real overlays); F4's per-seed switched-off rate is a fraction of the
            # faces on which the chosen latent is active (about a third): 12 faces left ~4 per edit, and F4's
            # verdict moved between machines (2026-11-30: not reproduced on one, inconclusive on another)
            "ablation_n": 64,
            "actmax_size": 64,  # act-max canvas (px; resized to 112 for the model)
            "actmax_steps": 40,  # Adam steps per act-max image of the illustration grid's other targets
            "f5_steps": 256,  # Adam steps of F5's renders: the SAE latent x 4 parameterisations x actmax_seeds
            "actmax_seeds": 3,  # act-max seeds per parameterisation for F5 (F5 needs >= 3)
            "f5_min_steps": 256,  # F5 is decided only at >= this many steps (converged CPPN / DIP)
            "actmax_lr": 0.05,  # Adam learning rate (Lucid default)
            "actmax_spin": True,  # CPU: run the act-max loops in a spin-waiting worker process (~1.8x faster)
            "dip_channels": 16,  # DIP skip-net width (the DIP paper uses 128)
            "dip_scales": 4,  # DIP skip-net depth (the DIP paper uses 5)
            "early_layer": "conv2_dw",  # "early channel" of the act-max grid
            "late_layer": "conv_sep",  # "last layer" of the act-max grid
            # section 7: an SAE on an intermediate layer's per-position activations ("" = skip the section)
            "mid_layer": "conv_sep",  # MobileFaceNet's last 7x7 map (IResNet: "bn2")
            "mid_faces": 2400,  # faces whose activations are cached (all splits; 0 = every face): x 49 tokens each
            "mid_expansion": 2,  # latents = expansion x channels (1,024 on 512 channels)
            "mid_k": 32,  # TopK budget per token
            "mid_steps": 250,  # Adam steps per seed (~6k tokens/s on one core: ~15 s per seed)
            "mid_batch": 384,  # tokens per step
        },
        "smoke": {"datasets": ["celeba10k", "utkface"], "limit_per_set": 80, "min_positives": 2,
                  "synthetic_identities": 8,
                  "synthetic_per_identity": 4, "expansion": 2, "sweep_expansion": [2], "sae_seeds": 2,
                  "sae_steps": 15, "grid_l1": [1.0], "grid_gated_l1": [1.0], "grid_k": [8], "grid_l0": [0.1],
                  "resample_every": 5, "n_show": 4, "contrast_n": 5, "ablation_n": 3, "actmax_size": 48,
                  "actmax_steps": 2, "f5_steps": 2, "actmax_seeds": 1, "actmax_spin": False,
                  "sae_workers": 1, "dip_channels": 8, "dip_scales": 3, "f1_expansion": 4,
                  "split_fractions": [0.6, 0.2, 0.2],
                  "mid_faces": 60, "mid_expansion": 1, "mid_k": 8, "mid_steps": 5, "mid_batch": 64},
        "default": {},
        "gpu": {"synthetic_identities": 500,
                "synthetic_per_identity": 20, "expansion": 16, "f1_expansion": 128,
                "sweep_expansion": [4, 8, 16, 32], "sae_seeds": 5, "sae_steps": 20000, "batch_size": 4096,
                "grid_l1": [0.3, 1.0, 3.0, 10.0, 30.0], "grid_gated_l1": [0.3, 1.0, 3.0, 10.0, 30.0],
                "grid_k": [8, 16, 32, 64, 128], "grid_l0": [0.01, 0.03, 0.1, 0.3, 1.0], "n_show": 8,
                "contrast_n": 50, "ablation_n": 64, "actmax_size": 112, "actmax_steps": 512, "f5_steps": 512,
                "actmax_seeds": 3, "dip_channels": 128, "dip_scales": 5,
                "mid_faces": 20000, "mid_expansion": 8, "mid_k": 64, "mid_steps": 5000, "mid_batch": 4096},
        "paper": {"model": "checkpoint", "limit_per_set": 0, "split_fractions": [0.8, 0.1, 0.1], "expansion": 16,
                  "f1_expansion": 128,  # 65,536 latents on 512-d templates, the paper's dictionary
                  "sweep_expansion": [4, 8, 16, 32],
                  "sae_seeds": 5, "sae_steps": 20000, "batch_size": 4096,
                  "grid_l1": [0.3, 1.0, 3.0, 10.0, 30.0], "grid_gated_l1": [0.3, 1.0, 3.0, 10.0, 30.0],
                  "grid_k": [8, 16, 32, 64, 128, 256], "grid_l0": [0.01, 0.03, 0.1, 0.3, 1.0], "n_show": 8,
                  "contrast_n": 50, "ablation_n": 64, "actmax_size": 112, "actmax_steps": 512, "f5_steps": 512,
                  "actmax_seeds": 3, "dip_channels": 128, "dip_scales": 5,
                  "early_layer": "layer1", "late_layer": "layer4",  # IResNet-100's first stage and last stage
                  "mid_layer": "bn2", "mid_faces": 20000, "mid_expansion": 8, "mid_k": 64, "mid_steps": 5000,
                  "mid_batch": 4096},
    },
    "05_distillation": {
        "base": {
            "teacher": "mobilefacenet-ms1m",  # frozen teacher (facestudy.models.pretrained name)
            "tail_after": "conv_sep",  # the student re-learns the teacher after this layer (trunk frozen, cached)
            "train_data": "celeba_id299",  # celeba_id299 | celeba10k | synthetic; FR + KD training faces
            "train_identities": 299,  # identities kept (those with >= min_per_identity images)
            "min_per_identity": 2,  # images an identity needs to be kept
            "max_per_identity": 12,  # images kept per identity (the trunk features are the cold cost)
            "synthetic_per_identity": 6,  # images per identity in the synthetic-world fallback
            "steps": 600,  # SGD steps per trained tail
            "seeds": [0, 1, 2],  # training seeds of every key row (the unit of replication)
            "batch_size": 32,  # batch size (the RPSD bank holds bank_multiple x batch_size)
            "lr": 0.05,  # SGD learning rate (cosine schedule, momentum 0.9, weight decay 5e-4)
            "fr_head": "sphereface2",  # FR loss (facestudy.losses.make_head name)
            "rows": ["none", "cosine", "l2", "iled", "rpsd", "rpsd_nobank", "iled+rpsd"],  # trained x seeds
            "single_rows": ["rpsd_teacher_bank", "relational"],  # illustrations: first seed only
            "sweep_s": [0.8, 0.95],  # ILED target cosine s values besides the paper's 0.9 (first seed)
            "sweep_r": [20.0],  # ILED scale r values besides the paper's 40 (first seed)
            "sweep_t": [0.1],  # RPSD mining threshold t values besides the paper's 0.05 (first seed)
            "iled_r": 40.0, "iled_s": 0.9, "iled_b": 0.1,  # ILED (reconstructed), paper values
            "iled_b_placement": "bias",  # "bias": softplus(r(s-c)+b) | "margin": softplus(r(s+b-c))
            "rpsd_t": 0.05, "rpsd_r": 60.0, "rpsd_b": 1.0,  # RPSD (reconstructed), paper values
            "rpsd_form": "softplus",  # softplus | l2 | l1 penalty on mined relation gaps
            "rpsd_include_batch": False,  # add in-batch relations to the bank relations
            "rpsd_bank": "student",  # student (intra-model relations, the paper's likely bank) | teacher (cross)
            "bank_multiple": 3,  # memory bank = 3 x batch size embeddings
            "lambda_iled": 40.0,  # L = lambda_ILED L_ILED + lambda_RPSD L_RPSD + L_FR; lambda_ILED not given
            "lambda_rpsd": 40.0,  # the paper's lambda_RPSD = 40
            "lambda_baseline": 40.0,  # weight of the cosine / raw-L2 / relational baselines (= lambda_ILED)
            "lfw_pairs_per_fold": 600,  # LFW View-2 pairs per fold (600 = all 6,000)
            "hard_pairs_per_fold": 100,  # LFW pairs per fold of the harder, low-resolution column
            "hard_lowres": 24,  # the harder column's faces are shrunk to this many px and blown back up
            "probe": 1024,  # training images whose student-teacher cosines c_i are tracked
            "d3_min_unsaturated": 0.1,  # D3 is testable when >= this share of c_i leave ILED's saturation
            "d5_delta": 1.0,  # D5 non-inferiority margin, LFW accuracy points (distilled tail vs teacher)
            # the from-scratch student path (facestudy.distill.study.train_row; not run by the page):
            "student": "smallcnn",  # student backbone (facestudy.models.create name)
            "student_kw": {"width": 16, "stages": 4},  # extra constructor arguments of the student
            "student_size": 48,  # student input resolution in px (the teacher sees 112)
            "epochs": 2,  # training epochs of a from-scratch student
            "teacher_checkpoint": "",  # a user-supplied IResNet-100 state dict (from-scratch path)
            "teacher_arch": "iresnet100",  # architecture of teacher_checkpoint
            "train_manifest": "",  # a user-supplied train.rec (MS1MV2) for train_data="rec" (from-scratch path)
        },
        "smoke": {"train_data": "synthetic", "train_identities": 12, "max_per_identity": 4,
                  "synthetic_per_identity": 4, "steps": 30, "seeds": [0, 1], "batch_size": 16,
                  "rows": ["none", "iled", "iled+rpsd"], "single_rows": [], "sweep_s": [], "sweep_r": [],
                  "sweep_t": [], "lfw_pairs_per_fold": 4, "hard_pairs_per_fold": 2, "probe": 64},
        "default": {},
        "gpu": {"tail_after": "blocks.12", "max_per_identity": 30, "steps": 4000, "seeds": [0, 1, 2, 3, 4],
                "batch_size": 128, "lr": 0.1, "hard_pairs_per_fold": 600,
                "single_rows": ["rpsd_teacher_bank", "relational"],
                "sweep_s": [0.7, 0.8, 0.95], "sweep_r": [10.0, 20.0, 80.0], "sweep_t": [0.0, 0.02, 0.1, 0.2]},
        "paper": {"tail_after": "blocks.12", "max_per_identity": 30, "steps": 20000,
                  "seeds": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "batch_size": 512, "lr": 0.1, "hard_pairs_per_fold": 600,
                  "sweep_s": [0.7, 0.8, 0.95], "sweep_r": [10.0, 20.0, 80.0], "sweep_t": [0.0, 0.02, 0.1, 0.2]},
    },
}


# ---------------------------------------------------------------------------------------------------
# THE rehearsal caps (``facestudy run ... --rehearse``, issue 20). A rehearsal runs a chapter end to end at a
# profile's real model shapes and code paths (every key not listed here keeps the profile's value: widths,
# depths, image sizes, expansions, checkpoints) but with capped work, so that gpu / paper can be checked on
# a CPU in minutes. Only keys that bound WORK belong here (steps, epochs, image / identity / pair counts,
# seed lists shortened to 1-2, and a batch size where the profile's would need GPU memory); a key that sets
# a model shape never does (tests/test_rehearsal.py checks that every key exists in the chapter's base and
# that nothing else changes). The caps replace the profile's values; --set values still apply on top.
# ---------------------------------------------------------------------------------------------------
REHEARSAL: dict[str, dict[str, Any]] = {
    "00_setup": {"n_render": 8},
    "00a_faceworld": {
        "n_grid": 6, "lattice_attributes": ["yaw", "eyeglasses"], "n_overlay": 4, "n_identities": 3,
        "n_per_identity": 2, "n_detect": 16, "n_verify_identities": 16, "n_verify_per_identity": 2, "n_pairs": 40,
        "speed_images": 16, "speed_repeats": 1, "fr_train_ids": 16, "fr_per_id": 4, "fr_test_ids": 10,
        "fr_test_per_id": 2, "fr_pairs": 40, "fr_epochs": 1,
    },
    "00b_models": {"pairs_per_fold": 8, "synthetic_identities": 10},
    "02_uiface": {
        "train_limit": 160, "train_images": 128, "train_per_identity": 4, "train_steps": 2, "train_batch": 4,
        "gate_identities": 4, "ae_steps": 2, "ae_batch": 4,
        "lr_warmup": 1, "ddim_steps": 2, "sample_batch": 8, "fr_batch": 16, "n_candidates": 6, "n_identities": 2,
        "n_per_identity": 2,
        "intervals": [[500, 1000], [0, 500]], "interval_identities": 2, "interval_per_identity": 2,
        "n_real_recall": 20, "recall_k": 2, "fr_epochs": 1, "lfw_per_fold": 4, "fr_seeds": [0],
        "guidance_grid": [1.0, 2.0], "guidance_identities": 3, "guidance_per_identity": 2,
    },
    "01_geometry": {
        "celeba_limit": 60, "n_max": 40, "n_boot": 20, "ks_equal_n": 5, "ks_equal_reps": 5, "world_macro_ids": 20,
        "world_macro_per_id": 2, "probe_limit": 40, "seeds": [0, 1, 2], "train_limit": 200, "train_world_ids": 8,
        "train_world_per_id": 4, "head_epochs": 1, "world_ids": 3, "world_curves": 4,
        "world_attributes": ["yaw", "hue"], "real_ids": 2, "real_curves": 4,
        "real_attributes": ["illumination", "brightness"],
        "k": 3, "ft_seeds": [0, 1, 2], "ft_ids": 3, "ft_epochs": 1, "tsne_n": 30, "lfw_pairs_per_fold": 2,
        "full_seeds": [0], "full_epochs": 1, "full_batch": 8, "full_max_steps": 2,
    },
    "03_kprpe": {
        "id299_limit": 40, "celeba10k_limit": 0, "synth_identities": 0, "synth_per_identity": 2, "epochs": 1,
        "batch_size": 8, "lfw_pairs_per_fold": 2, "lfw_folds": 3, "keypoint_counts": [5, 2], "noise_alphas": [0.0, 0.1],
        "overhead_batch": 4, "overhead_steps": 1, "overhead_repeats": 1, "seeds": [0, 1], "dose_strengths": [1.0],
        "dose_sides": [14], "fusion_lfw_limit": 300, "fusion_identities": 2,
    },
    "04_facemint": {
        "limit_per_set": 100, "min_positives": 2, "synthetic_identities": 8, "synthetic_per_identity": 4,
        "sweep_expansion": [4, 32], "sae_seeds": 2, "sae_steps": 6, "resample_every": 3, "batch_size": 256,
        "grid_l1": [1.0], "grid_gated_l1": [1.0], "grid_k": [8], "grid_l0": [0.1], "n_show": 4, "contrast_n": 5,
        "ablation_n": 3, "actmax_steps": 2, "f5_steps": 2, "actmax_seeds": 1, "mid_faces": 60, "mid_steps": 3,
        "mid_batch": 256, "f1_expansion": 4,
    },
    "05_distillation": {
        "train_identities": 12, "max_per_identity": 4, "synthetic_per_identity": 4, "steps": 2, "seeds": [0, 1],
        "batch_size": 16, "sweep_s": [0.8], "sweep_r": [20.0], "sweep_t": [0.1], "lfw_pairs_per_fold": 4,
        "hard_pairs_per_fold": 2, "probe": 64,
    },
}


def chapters() -> list[str]:
    return list(TABLE)


def resolve(chapter: str, profile: str, *, rehearse: bool = False, **overrides: Any) -> Config:
    """Concrete sizes for ``chapter`` at ``profile``, with ``overrides`` applied on top.

    ``rehearse=True`` applies the chapter's :data:`REHEARSAL` caps after the profile and before ``overrides``.

    Raises :class:`ParameterError` naming the valid choices for an unknown chapter, profile or key, or an
    override whose type does not match the table's value.
    """
    if chapter not in TABLE:
        raise ParameterError(f"unknown chapter {chapter!r}; valid chapters: {', '.join(TABLE)}")
    if profile not in PROFILES:
        raise ParameterError(
            f"unknown profile {profile!r} for chapter {chapter}; valid profiles: {', '.join(PROFILES)}"
        )
    entry = TABLE[chapter]
    cfg = Config(entry.get("base", {}))
    for key, value in entry.get(profile, {}).items():
        if key not in cfg:
            raise ParameterError(f"profile table bug: {chapter}/{profile} sets {key!r}, which is not in base")
        cfg[key] = value
    if rehearse:
        for key, value in REHEARSAL.get(chapter, {}).items():
            if key not in cfg:
                raise ParameterError(f"rehearsal table bug: {chapter} caps {key!r}, which is not in base")
            cfg[key] = value
    for key, value in overrides.items():
        if key not in cfg:
            valid = ", ".join(sorted(cfg)) or "(none)"
            raise ParameterError(f"unknown setting {key!r} for chapter {chapter}; valid settings: {valid}")
        cfg[key] = _coerce(chapter, key, value, cfg[key])
    cfg["profile"] = profile
    cfg["chapter"] = chapter
    return cfg


def _coerce(chapter: str, key: str, value: Any, reference: Any) -> Any:
    if reference is None or value is None:
        return value
    kind = type(reference)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (list, tuple) and isinstance(value, (list, tuple)):
        return kind(value)
    raise ParameterError(
        f"setting {key!r} of chapter {chapter} must be {kind.__name__} (like {reference!r}), got {value!r}"
    )
