"""Whole-run lockstep comparison of vireid_jax with the authors' training code.

`python benchmarks/lockstep.py --method mbccm|pgm --reference DIR` (docs/verification.md).
Modules: settings (the run's sizes), names (our variables under the authors' names), ours (the
adapter: the only module calling vireid_jax's training), record (what each side reports),
torch_cpu (the authors' code on a CPU), reference_mbccm / reference_pgm (their training loops,
fed our batches), compare (tolerances, differences, verdict), report (table and plot).
"""
