"""Namespaces kept in an etcd v3 cluster, shared by every host of a fleet.

:class:`EtcdState` implements the state API with etcd deciding every write
(compare-and-swap on revisions) and a local mirror serving reads and
watches. :class:`EtcdConfig` says how to reach the cluster. Importing this
package needs ``grpcio`` and ``protobuf``.
"""

from .config import EtcdConfig
from .state import EtcdState

__all__ = ["EtcdConfig", "EtcdState"]
