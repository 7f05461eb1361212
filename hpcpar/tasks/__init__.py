"""Tasks: the dynamic farm, rank pipelines and rank-local process or thread pools."""
