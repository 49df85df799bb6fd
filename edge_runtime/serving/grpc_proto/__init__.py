"""Python modules generated from the Open Inference Protocol ("KServe v2") gRPC proto.

``grpc_predict_v2.proto`` comes from the KServe project (Apache License 2.0; its header and
the list of changes are kept in the file); ``grpc_predict_v2_pb2.py``,
``grpc_predict_v2_pb2_grpc.py`` and ``grpc_predict_v2_pb2.pyi`` are generated from it by
``scripts/gen-grpc.sh`` and must not be edited by hand. The package is ``inference`` and the
service ``inference.GRPCInferenceService``, the names Triton and ``tritonclient.grpc`` use.

The messages register in protobuf's default descriptor pool under ``inference.*``, as
``tritonclient.grpc``'s own modules do, so one process cannot import both.
"""
