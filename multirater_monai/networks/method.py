"""The method interface: what every multi-rater method network offers, and what engines and bundles use.

A method is a ``torch.nn.Module`` (DESIGN.md section 3) with

* **inference**: ``forward(image) -> Tensor``, one tensor of logits ``(B, C, *spatial)``, so that
  TorchScript export, ``verify_net_in_out`` and MONAI inferers work unchanged;
* **named output groups**: :meth:`output_groups` says which channels of that tensor are what, in
  the current output mode (``{"personalized": R, "samples": S}``), and :meth:`split_outputs` turns
  the logits of one image into probabilities per group, plus derived maps (``"calibrated"``: a
  consensus probability per structure). The vocabulary of group names:

  - ``personalized``: one output per rater (K * R with K structures, structure-major);
  - ``samples``: S plausible segmentations (generation methods);
  - ``calibrated``: one calibrated / consensus probability map per structure;
  - ``consensus``: one mask per structure from a rater-blind model;
  - ``agreement_logits``: AVAP's agreement classes (read through ``calibrated``);

* **output settings**: :meth:`set_output_mode` (one of :attr:`output_modes`) and
  :meth:`set_sampling` (number of samples, seed) for generation methods; :meth:`configure_output`
  sets both, as evaluation settings do;
* **training**: :meth:`training_objective` takes the whole batch (image, rater stack, rater mask)
  and returns ``{"loss": total, <term>: value, ...}``; the engine back-propagates ``loss`` and logs
  every term;
* **stages**: :attr:`stage_modules` names the top-level sub-modules that each stage trains (one
  entry for a one-stage method); :meth:`start_stage` freezes the rest, :meth:`parameters_to_train`
  gives a stage's parameters to its optimizer, and frozen sub-modules stay in eval mode, so their
  BatchNorm statistics do not drift;
* :attr:`spatial_divisor`: input sizes must be multiples of it (the preprocessing pads to it).

Engines and bundles use only this interface: no ``hasattr`` probing, no method names in configs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from .blocks.sampling import KEEP

__all__ = ["MultiRaterMethod", "OUTPUT_GROUP_NAMES"]

OUTPUT_GROUP_NAMES = ("personalized", "samples", "calibrated", "consensus", "agreement_logits")


class MultiRaterMethod(nn.Module, ABC):
    """Base class of every method network; see the module docstring.

    Subclasses set :attr:`output_modes` (the first is the default), :attr:`stage_modules` for
    several stages, and implement :meth:`forward`, :meth:`training_objective` and
    :meth:`output_groups`. They call ``super().__init__(num_raters, num_structures)`` first.
    """

    # properties TorchScript must not compile (they are Python-side settings); subclasses extend the list
    __jit_unused_properties__ = ["num_samples", "num_stages", "spatial_divisor"]
    #: output modes :meth:`set_output_mode` accepts; the first is the default
    output_modes: tuple[str, ...] = ("default",)
    #: per stage, the names of the top-level sub-modules it trains; ``None``: one stage, everything trains
    stage_modules: tuple[tuple[str, ...], ...] | None = None

    def __init__(self, num_raters: int, num_structures: int = 1) -> None:
        super().__init__()
        if int(num_raters) < 1 or int(num_structures) < 1:
            raise ValueError(f"num_raters and num_structures must be >= 1, got {num_raters} and {num_structures}.")
        self.num_raters = int(num_raters)
        self.num_structures = int(num_structures)
        self.stage = 1
        self.output_mode = self.output_modes[0]

    # ------------------------------------------------------------------ inference
    @abstractmethod
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, *spatial)``; the channels are :meth:`output_groups` in order."""

    @abstractmethod
    def output_groups(self) -> dict[str, int]:
        """Named channel groups of :meth:`forward`'s output in the current mode, in channel order."""

    @torch.jit.unused
    def split_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of one image ``(C, *spatial)`` -> probabilities per named group (sigmoid by default).

        Methods whose groups are not per-pixel sigmoid outputs (AVAP's agreement classes) or that
        derive a map from them (a consensus) override this.
        """
        groups = self.output_groups()
        if logits.shape[0] != sum(groups.values()):
            raise ValueError(
                f"the output has {logits.shape[0]} channels but {type(self).__name__} in mode {self.output_mode!r} "
                f"gives {groups} = {sum(groups.values())}; fix: build the network with the settings it was trained with."
            )
        parts = torch.split(logits, list(groups.values()), dim=0)
        return {name: torch.sigmoid(part) for name, part in zip(groups, parts)}

    @torch.jit.unused
    def add_rater_views(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Complete ``out`` (from :meth:`split_outputs`) with ``calibrated`` and, for a rater-blind run,
        ``personalized``, so every per-rater and calibrated table can score any output mode.

        ``calibrated``: the ``consensus`` maps ``(K, *sp)`` where they were asked for, else per structure the
        mean of its R rater maps. A run without rater outputs gives every rater its structure's consensus
        (``(K * R, *sp)``, structure-major as the rater stack, DESIGN.md): a rater-blind row.
        """
        k, r = self.num_structures, self.num_raters
        if "consensus" in out:
            out["calibrated"] = out["consensus"]
            if "personalized" not in out:
                out["personalized"] = out["consensus"].repeat_interleave(r, dim=0)
        elif "personalized" in out:
            per_rater = out["personalized"]
            out["calibrated"] = per_rater.reshape(k, r, *per_rater.shape[1:]).mean(1)
        return out

    @property
    def num_samples(self) -> int:
        """S of the ``samples`` group (0 for methods that draw no samples)."""
        return 0

    @property
    def spatial_divisor(self) -> int:
        """Input sizes must be multiples of this; default: the ``backbone``'s."""
        return int(self.backbone.spatial_divisor)

    def set_output_mode(self, output_mode: str) -> None:
        if output_mode not in self.output_modes:
            raise ValueError(f"output_mode must be one of {self.output_modes}, got {output_mode!r}.")
        self.output_mode = output_mode

    @torch.jit.unused
    def set_sampling(self, num_samples: int | None = None, sample_seed: Any = KEEP) -> None:
        """Number of samples and noise seed (None: fresh noise at each call); generation methods override."""
        if num_samples is not None or sample_seed is not KEEP:
            raise ValueError(f"{type(self).__name__} draws no samples; remove num_samples / sample_seed from the setting.")

    @torch.jit.unused
    def configure_output(self, output_mode: str | None = None, num_samples: int | None = None,
                         sample_seed: Any = KEEP) -> None:
        """Set the output mode and the sampling in one call (an evaluation setting, an inference request)."""
        if output_mode is not None:
            self.set_output_mode(output_mode)
        if num_samples is not None or sample_seed is not KEEP:
            self.set_sampling(num_samples=num_samples, sample_seed=sample_seed)

    # ------------------------------------------------------------------ training
    @abstractmethod
    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": total, <term>: value, ...}`` for a batch: image ``(B, C, *sp)``, rater stack
        ``(B, R, *sp)`` (``K * R`` channels with K structures), rater mask ``(B, R)`` bool (None: all present)."""

    @property
    def num_stages(self) -> int:
        return 1 if self.stage_modules is None else len(self.stage_modules)

    def _stage_module_names(self, stage: int) -> tuple[str, ...] | None:
        if not 1 <= int(stage) <= self.num_stages:
            raise ValueError(f"{type(self).__name__} has {self.num_stages} stage(s); got stage {stage}.")
        return None if self.stage_modules is None else self.stage_modules[int(stage) - 1]

    @torch.jit.unused
    def parameters_to_train(self, stage: int | None = None) -> list[nn.Parameter]:
        """The parameters that ``stage`` (default: the current one) trains, for its optimizer."""
        names = self._stage_module_names(self.stage if stage is None else stage)
        if names is None:
            return [p for p in self.parameters() if p.requires_grad]
        return [p for name in names for p in getattr(self, name).parameters()]

    @torch.jit.unused
    def start_stage(self, stage: int) -> MultiRaterMethod:
        """Switch to ``stage``: from stage 2 on, only its sub-modules require gradients; the rest is frozen."""
        names = self._stage_module_names(stage)
        self.stage = int(stage)
        if names is not None and self.stage > 1:
            for name, param in self.named_parameters():
                param.requires_grad_(name.split(".")[0] in names)
        return self.train(self.training)

    @torch.jit.unused
    def frozen_module_names(self) -> list[str]:
        """Top-level sub-modules that the current stage does not train (empty in stage 1)."""
        names = self._stage_module_names(self.stage)
        if names is None or self.stage == 1:
            return []
        return [name for name, _ in self.named_children() if name not in names]

    def train(self, mode: bool = True) -> MultiRaterMethod:
        super().train(mode)
        # frozen parts stay in eval mode: their BatchNorm statistics must not drift in a later stage
        if self.stage > 1 and self.stage_modules is not None:
            trained = self.stage_modules[self.stage - 1]
            for name, module in self.named_children():
                if name not in trained:
                    module.eval()
        return self

