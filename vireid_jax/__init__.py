"""vireid_jax: unsupervised visible-infrared person re-id (MBCCM) in JAX/Flax."""
