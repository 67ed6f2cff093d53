# conf/ is the package seg.conf (pyproject.toml maps it), so that the configs ship inside the wheel and
# Hydra finds them as pkg://seg.conf in an installed package and in a checkout alike.
