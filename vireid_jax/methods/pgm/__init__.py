"""PGM (Wu and Ye, CVPR 2023): progressive graph matching and alternate cross-modality learning."""
