"""The edge node: one device's local data, DP-SGD training and signed updates.

:class:`EdgeNode` is what both ``edgeveil simulate`` and the Kafka edge agent run for every node.
"""

from pipeline.node.edge import NO_DP_EPSILON, EdgeNode, PersonalLayers, common_batch_sizes

__all__ = ["NO_DP_EPSILON", "EdgeNode", "PersonalLayers", "common_batch_sizes"]
