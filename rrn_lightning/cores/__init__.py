"""The recurrent cores: plain ``nn.Module``s that know nothing of Lightning or data.

``RecurrentCore`` is the interface; ``RelationalMemory`` the RMC, ``LSTMCore`` the ``nn.LSTM`` baseline, and
``ReferenceRelationalMemory`` the plain, literal RMC step that the tests and benchmarks compare against.
"""

from .base import CoreTrace, RecurrentCore
from .lstm import LSTMCore
from .reference import ReferenceRelationalMemory
from .rmc import RelationalMemory

__all__ = ["CoreTrace", "LSTMCore", "RecurrentCore", "ReferenceRelationalMemory", "RelationalMemory"]
