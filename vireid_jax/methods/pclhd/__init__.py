"""PCLHD: "Learning Commonality, Divergence and Variety for Unsupervised Visible-Infrared Person
Re-identification" (Shi, Yin et al., NeurIPS 2024), from the authors' code (XiangboYin/PCLHD at
8a376cd; docs/pclhd.md).

PGM's two stages (vireid_jax/methods/pgm/) with these changes: every memory is a hybrid table (a
centroid row and a hard row per cluster, loss 0.5 (CE_hard + relu(CE_centroid - 0.2))); stage 2
adds an EMA teacher (what it evaluates and saves), SYSU-MM01's three-round variant of PGM's
matching, and a joint clustering of both modalities with a modality-aware Jaccard distance whose
third hybrid memory gets a second optimiser step every iteration. The teacher's "dynamic
prototype" term is a constant in the authors' code (no gradient reaches it).

The numerical pieces, pure functions each equal to the authors' code:

  memory        the hybrid table: layout, loss, update inside the backward (`hybrid_losses`)
  instances     the teacher's instance table and its constant dynamic term D
  losses        stage 1 (`stage1_terms`), stage 2's main and joint steps (`main_terms`,
                `joint_terms`, composed by `pclhd_stage2_losses`) with the authors' update order
  clustering    the joint Jaccard distance, joint centres, joint training rows
  association   `pclhd_match`, the SYSU and RegDB matching variants
  teacher       `ema_update`, the teacher's parameter EMA
  config        `pclhd_config(dataset)`, every setting with its source
  method        the schedule, the epoch hooks and the step on the core's interface (`METHOD`)
"""

from vireid_jax.methods.pclhd.method import METHOD  # noqa: F401
