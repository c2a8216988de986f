"""harden.runtime: deployed engines, their gradient-enabled twins, re-attacks and verdicts (docs/design.md §5).

- `engines`: ONNX Runtime and TensorRT behind one context-managed interface;
- `graph_twin`, `torch_ops`, `twins`: PyTorch twins of the deployed graph (and of its precision);
- `audits`: direct checks that name why a deployment differs from its source;
- `verify`, `divergence`, `gates`, `report`: `harden verify` end to end.

The folder is `runtime/` at the repository root; it installs as `harden.runtime`. It may import
`harden.export` and the rest of `harden`.
"""
