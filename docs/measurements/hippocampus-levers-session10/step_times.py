"""Training-step time of candidate hippocampus segmenters (``step_times.json``).

Batch 4 at 40×56×40, forward + backward + AdamW, mean of 3 steps after 1 warm-up, on
random inputs. Run from the project root on an idle machine:
``nice -n -10 .venv/bin/python docs/measurements/hippocampus-levers-session10/step_times.py``.
"""

from __future__ import annotations

import time

import torch

from medvol.models.segmenters import dynunet, unet

PATCH = (40, 56, 40)
SUPERVISED = {"patch_size": PATCH, "deep_supervision": True}


def step_ms(network: torch.nn.Module) -> float:
    """Milliseconds per training step of ``network`` (mean of 3 after 1 warm-up)."""
    optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
    images = torch.randn(4, 1, *PATCH)
    network.train()
    for step in range(4):
        if step == 1:
            started = time.perf_counter()
        out = network(images)
        loss = sum(o.mean() for o in out) if isinstance(out, tuple) else out.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / 3 * 1000


if __name__ == "__main__":
    torch.manual_seed(0)
    candidates = {
        "unet, 16 filters (the earlier recipe)": unet(1, 3, 4, 16),
        "unet, 32 filters": unet(1, 3, 4, 32),
        "unet, 16 filters, 2 residual units": unet(1, 3, 4, 16, num_res_units=2),
        "unet, 24 filters, 2 residual units": unet(1, 3, 4, 24, num_res_units=2),
        "unet, 32 filters, 2 residual units (the recipe now)": unet(1, 3, 4, 32, num_res_units=2),
        "dynunet, 16 filters, deep supervision": dynunet(1, 3, 4, 16, **SUPERVISED),
        "dynunet, 32 filters, deep supervision": dynunet(1, 3, 4, 32, **SUPERVISED),
    }
    for name, network in candidates.items():
        parameters = sum(p.numel() for p in network.parameters()) / 1e6
        print(f"{name:55s} {step_ms(network):7.0f} ms/step  {parameters:.2f} M parameters", flush=True)
