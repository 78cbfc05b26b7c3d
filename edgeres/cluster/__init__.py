"""Work that outgrows one machine: :class:`RayExecutor` runs an :class:`~edgeres.core.executor.Executor`'s
tasks on a Ray cluster (``edgeres validate --ray``).

Ray is an optional dependency (``pip install 'edgeres[cluster]'``), imported
only when an executor is made.  Only edgeres.core is imported from here;
the light layers never import this package (pyproject.toml's contracts).
"""

from edgeres.cluster.ray_executor import RayExecutor, parse_address

__all__ = ["RayExecutor", "parse_address"]
