"""Test-time refinement of a χ estimate against the measured local field.

* :func:`dfqsm`: early-stopped gradient descent on the data fidelity from the estimate (DF-QSM);
* :func:`dll2`: data fidelity plus an L2 pull towards the estimate, in closed form or by CG (DLL2);
* :func:`fine`: fine-tuning a copy of the network on the data fidelity of its own output (FINE);
* :func:`lot_consistency`: after a phase network, data consistency against the Laplacian of the
  wrapped phase itself (no local field needed), with an L2 pull towards the network's χ;
* :func:`lot_tv_consistency`: the same data term with a TV-regularised correction of the network's χ
  (what the ``iqsm`` and ``iqsm+`` recipes run).

All take and return χ in ppm; the first three take the local field in ppm of B0.
"""

from .dfqsm import DEFAULT_TOLERANCE, dfqsm
from .dll2 import dll2
from .fine import fine
from .lot import lot_consistency
from .lot_tv import lot_tv_consistency

__all__ = ["DEFAULT_TOLERANCE", "dfqsm", "dll2", "fine", "lot_consistency", "lot_tv_consistency"]
