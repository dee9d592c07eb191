"""ANIL (Raghu et al. 2020): MAML whose inner loop adapts the output layer only
(`inner_mask` head/out); the rest of the network is learned in the outer loop
alone.  Every MAML setting applies; the inner mask is the algorithm's."""
from maml_jax.algorithms import maml

ALGORITHM = maml.ALGORITHM._replace(name="anil", fixed={"inner_mask": "head/out"})
