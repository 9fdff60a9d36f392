"""torchdiffeq's own seminorm on the ``seminorm`` workload's problem: backward nfe.

Command line: ``python -m benchmarks.seminorm_torchdiffeq``. The same shapes as ``train_node``
(MLP 2→64→64→2 tanh, batch 256 as one ODE, t ∈ [0, 1], dopri5, rtol = atol = 1e-5, float32), at
torch's default initial weights and with every weight matrix ×4, solved with
``torchdiffeq.odeint_adjoint`` with the default (mixed) adjoint norm and with
``adjoint_options=dict(norm="seminorm")``. Prints forward and backward nfe: a reference for
how much a seminorm can save on this problem in the library it comes from.
"""

from __future__ import annotations


def main() -> None:
    try:
        import torch
        import torchdiffeq
    except ImportError:
        print("torch and torchdiffeq are needed: pip install -e '.[bench]'")
        return
    torch.manual_seed(0)
    print("| weights | adjoint norm | fwd nfe | bwd nfe |\n|---|---|---|---|")
    for scale in (1.0, 4.0):
        net = torch.nn.Sequential(
            torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
            torch.nn.Linear(64, 2),
        )  # fmt: skip
        with torch.no_grad():
            for layer in net:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.mul_(scale)

        class Field(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net, self.nfe = net, 0

            def forward(self, t, z):
                self.nfe += 1
                return self.net(z)

        field = Field(net)
        z0, ts = torch.randn(256, 2), torch.tensor([0.0, 1.0])
        for name, options in (("mixed (default)", {}), ("seminorm", {"norm": "seminorm"})):
            field.nfe = 0
            zs = torchdiffeq.odeint_adjoint(
                field, z0, ts, rtol=1e-5, atol=1e-5, method="dopri5", adjoint_options=options
            )
            forward = field.nfe
            field.nfe = 0
            ((zs[-1] - 1) ** 2).mean().backward()
            print(f"| ×{scale:g} | {name} | {forward} | {field.nfe} |")


if __name__ == "__main__":
    main()
