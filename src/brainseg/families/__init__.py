"""Model families: what each paper brings to brainseg, behind one contract.

A family is one paper's method: its network (a module under :mod:`brainseg.models`), the per-voxel
inputs it reads from an image (patch sources, spatial priors, coordinates), the sampler that draws
its training batches, its loss, and its dense predictor. Everything else -- preparing images, the
reference space, the label table, the training loop, model folders, ``segment``, ``evaluate``,
``calibrate``, ``info`` and the ablation command -- is shared, and reaches a family only through the
methods of :class:`Family`.

The model folder names its family: ``model.name`` in its ``config.yaml`` (``basenet`` or
``ganaye2018`` for Ganaye et al. 2018, ``deepnat`` for Wachinger et al. 2018, ``brebisson2015`` for de
Brébisson and Montana 2015, ``mixnet`` for Chen and Merhof 2018) is looked up in
:data:`FAMILIES_BY_MODEL`. A new family subclasses :class:`Family`, implements its abstract methods,
and registers its model names there; a family with its own model settings adds their dataclass to
:data:`brainseg.model_configs.MODEL_CONFIGS`. Every model configuration has ``name``, ``num_classes``,
``dropout``, ``batch_norm``, ``reference_space`` and ``needs_reference``; the shared code reads
nothing else of it, and asks the family the rest (:meth:`Family.needs_atlas`).

The shapes every family shares:

- a *working grid*: the 1 mm grid of the scan (RAS+), or the reference template's grid for
  reference-space models (``needs_reference`` of the model configuration); images, masks and class maps handed
  to a family are on it;
- *case inputs*: whatever the family computes once per image (:meth:`Family.case_inputs`), opaque
  to the shared code, read back by the family's sampler and predictor;
- a *case sampler* (:class:`CaseSampler`): draws training batches of one case and knows the class
  frequencies of what it draws (for the sampling prior, :mod:`brainseg.postprocessing.prior`); training
  asks for it with the run's label table (:meth:`Family.case_sampler_with_labels`), which a family may
  read and by default does not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from brainseg.config import AnyModelConfig, Config, TrainingConfig
from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.labels import LabelTable

__all__ = ["CaseSampler", "FAMILIES_BY_MODEL", "Family", "family_of"]


class CaseSampler(Protocol):
    """Draws the training batches of one case (see :meth:`Family.case_sampler`).

    A structural type: a family's sampler need not subclass it, only have its two methods.

    Parameters
    ----------
    *args, **kwargs
        None taken: the placeholder constructor of ``typing.Protocol`` (a protocol is never
        instantiated; ``CaseSampler()`` raises ``TypeError``).
    """

    def draw(self, n: int, rng: np.random.Generator, tc: TrainingConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``n`` training examples: network inputs by keyword (first axis ``n``) and target classes.

        The targets are ``(n,)``, or ``(n, ...)`` for a family whose loss reads several classes per
        example (DeepNAT's ``(n, T)``, one per task, or ``(n, T, 2)`` for its two networks); the
        trainer concatenates inputs and targets along axis 0 and casts the targets to int64, so
        row ``i`` of every array must belong to example ``i`` (negative targets survive the cast,
        e.g. as a family's "masked" marker).

        Parameters
        ----------
        n : int
            Number of examples to draw.
        rng : numpy.random.Generator
            The source of every random choice (voxels, slices, augmentation).
        tc : TrainingConfig
            The training settings the sampler reads (``sampling``, ``augment`` and its ranges).

        Returns
        -------
        inputs : dict of str to ndarray
            The network's keyword inputs (float32 patches, slices, coordinates...), first axis ``n``.
        targets : ndarray of int, shape (n,) or (n, ...)
            Class indices of the examples (see above).
        """
        ...

    def class_frequencies(self, num_classes: int, mode: str) -> np.ndarray:
        """Expected class frequencies, shape ``(num_classes,)``, of sampling ``mode`` (``'uniform'``: the brain's).

        For multi-task targets: those of the examples' own voxels (what the main output predicts).
        For a model of several networks: those of the prior its combined output was trained under.

        Parameters
        ----------
        num_classes : int
            Length of the result (the model's classes, background included).
        mode : str
            The sampling mode, ``training.sampling`` (``'uniform'``, ``'balanced'``, ``'mixed'``, DeepNAT's
            ``'deepnat'``; a family may accept only some).

        Returns
        -------
        ndarray of float64, shape (num_classes,)
            Sums to 1.
        """
        ...


class Family(ABC):
    """One paper's method behind the contract the shared pipeline uses.

    Attributes
    ----------
    name : str
        The family's name (the paper's first author and year).
    paper : str
        Short citation for model cards (``'Ganaye et al. (2018)'``).
    paper_parameters : str
        The paper's parameter count, for model cards and ``info`` (``"paper's BaseNet: 1,249,415"``).
    training_examples : str
        What one of ``training.samples_per_epoch`` is, plural, for model cards (``'patches'``, ``'slice crops'``).
    paper_results : dict of str to tuple
        The paper's ablation figures by row label (:meth:`row_label`): mean Dice, mean Hausdorff
        distance (mm), mean surface distance (mm), parameters; None where the paper has none.
    paper_error_rates : dict of str to float
        The paper's validation error rates by row label, for papers that report them (empty: the
        ablation table has no error-rate columns).
    """

    name: str = ""
    paper: str = ""
    paper_parameters: str = ""
    training_examples: str = "patches"
    paper_results: dict[str, tuple[float | None, float | None, float | None, int | None]] = {}
    paper_error_rates: dict[str, float] = {}

    @abstractmethod
    def build_network(self, cfg: AnyModelConfig) -> nn.Module:
        """The untrained network a model configuration describes (``cfg.num_classes`` filled in).

        Parameters
        ----------
        cfg : AnyModelConfig
            The model configuration (``config.model``), of this family's dataclass.

        Returns
        -------
        torch.nn.Module
            The network, freshly initialised.
        """

    @abstractmethod
    def describe(self, config: Config) -> str:
        """One line naming the configuration's network, inputs, losses and augmentation (model cards, ``info``).

        Parameters
        ----------
        config : Config
            The whole configuration (its ``model`` and ``training`` sections).

        Returns
        -------
        str
            One line of prose.
        """

    @abstractmethod
    def case_inputs(
        self,
        cfg: AnyModelConfig,
        image: np.ndarray,
        mask: np.ndarray,
        affine: np.ndarray,
        background: float,
        atlas: ProbabilisticAtlas | None,
    ) -> Any:
        """What the network reads from one image, computed once.

        Parameters
        ----------
        cfg : AnyModelConfig
            The model configuration (``config.model``).
        image : ndarray of float32, shape (D, H, W)
            The normalised image on the working grid (RAS+); ``(M, D, H, W)`` for a configuration of
            several modalities (:meth:`modalities`).
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid (the same as :meth:`case_sampler` and
            :meth:`predict` receive), e.g. for coordinates relative to the brain.
        affine : ndarray of float64, shape (4, 4)
            Voxel -> mm of the working grid (identity on a scan's own 1 mm grid).
        background : float or ndarray of float32, shape (M,)
            The normalised intensity outside the brain (padding value), one per modality with several.
        atlas : ProbabilisticAtlas or None
            The reference atlas on the working grid, for reference-space models.

        Returns
        -------
        object
            The family's case inputs (e.g. :class:`~brainseg.families.ganaye2018.GanayeInputs`), opaque to
            the shared code.
        """

    @abstractmethod
    def case_sampler(self, cfg: AnyModelConfig, inputs: Any, classes: np.ndarray, mask: np.ndarray) -> CaseSampler:
        """The training sampler of one case.

        Parameters
        ----------
        cfg : AnyModelConfig
            The model configuration (``config.model``).
        inputs : object
            From :meth:`case_inputs` for the same image.
        classes : ndarray of uint8, shape (D, H, W)
            Reference class indices on the working grid.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid.

        Returns
        -------
        CaseSampler
            Draws the case's training batches.
        """

    def case_sampler_with_labels(
        self, cfg: AnyModelConfig, inputs: Any, classes: np.ndarray, mask: np.ndarray, labels: LabelTable
    ) -> CaseSampler:
        """The training sampler of one case, told the run's label table (what training calls).

        The default is :meth:`case_sampler`, the table unused. A family whose sampler needs to know what
        the classes are overrides this one (MixNet's left-right flips swap each left structure's class
        with its right counterpart, found by name); ``labels`` is the table ``classes`` index.

        Parameters
        ----------
        cfg : AnyModelConfig
            The model configuration (``config.model``).
        inputs : object
            From :meth:`case_inputs` for the same image.
        classes : ndarray of uint8, shape (D, H, W)
            Reference class indices on the working grid.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid.
        labels : LabelTable
            The run's label table, whose class indices ``classes`` holds.

        Returns
        -------
        CaseSampler
            Draws the case's training batches.
        """
        return self.case_sampler(cfg, inputs, classes, mask)

    @abstractmethod
    def loss(
        self, network: nn.Module, batch: dict[str, torch.Tensor], targets: torch.Tensor, tc: TrainingConfig
    ) -> torch.Tensor:
        """The training loss of a batch (scalar tensor), auxiliary or multi-task terms included.

        Parameters
        ----------
        network : torch.nn.Module
            From :meth:`build_network`, in training mode (possibly under a bfloat16 autocast).
        batch : dict of str to Tensor
            The samplers' inputs (:meth:`CaseSampler.draw`) concatenated over cases, on the network's
            device; first axis ``B``.
        targets : Tensor of int64, shape (B,) or (B, ...)
            The samplers' targets, row ``i`` of example ``i``.
        tc : TrainingConfig
            The training settings (e.g. auxiliary loss weights).

        Returns
        -------
        Tensor
            Scalar, differentiable with respect to the network's parameters.
        """

    @abstractmethod
    def predict(
        self,
        network: nn.Module,
        inputs: Any,
        mask: np.ndarray,
        *,
        probabilities: bool = False,
        probability_dtype: type = np.float16,
        progress: bool = False,
        logit_bias: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Dense inference over the brain mask of one image.

        Parameters
        ----------
        network : nn.Module
            In eval mode.
        inputs
            From :meth:`case_inputs`.
        mask : ndarray of bool, shape (D, H, W)
            Brain mask on the working grid; voxels outside are background (class 0).
        probabilities : bool
            Also return the class probabilities.
        probability_dtype : numpy dtype
            Their storage type.
        progress : bool
            Show a progress bar.
        logit_bias : ndarray of float, shape (num_classes,), optional
            Added to the logits before the softmax (the sampling prior's correction).

        Returns
        -------
        classes : ndarray of uint8, shape (D, H, W)
        probabilities : ndarray of ``probability_dtype``, shape (num_classes, D, H, W), or None
        """

    def row_label(self, config: Config) -> str:
        """The name of a configuration's row in the ablation table (default: its description).

        Parameters
        ----------
        config : Config
            The whole configuration.

        Returns
        -------
        str
            The row label; a key of :attr:`paper_results` where the paper has that row.
        """
        return self.describe(config)

    def modalities(self, cfg: AnyModelConfig) -> tuple[str, ...]:
        """The co-registered images a configuration reads, in channel order (default: ``('t1',)``).

        With more than one, :meth:`case_inputs` receives them stacked, ``image`` of shape
        ``(M, D, H, W)`` and ``background`` of shape ``(M,)``, each modality normalised on its own
        (:attr:`brainseg.preprocessing.pipeline.PreparedImage.network_image`); such a configuration
        works on the scan's own grid. The first is a manifest's ``image`` column, each other ``NAME``
        its ``image_NAME`` column (:class:`brainseg.io.manifest.Case`).

        Parameters
        ----------
        cfg : AnyModelConfig
            The model configuration.

        Returns
        -------
        tuple of str
            Modality names, the first the one masked and segmented on.
        """
        return ("t1",)

    def needs_atlas(self, cfg: AnyModelConfig) -> bool:
        """Whether :meth:`case_inputs` reads the reference's probabilistic atlas (default: False).

        Training and model folders of such a configuration refuse a reference
        without ``atlas.npz``, or one whose atlas has another number of classes.

        Parameters
        ----------
        cfg : AnyModelConfig
            The model configuration.

        Returns
        -------
        bool
            True where the configuration reads the atlas.
        """
        return False


#: Model names (``model.name`` of a config) -> their family; filled by the family modules below.
FAMILIES_BY_MODEL: dict[str, Family] = {}


def family_of(cfg: AnyModelConfig) -> Family:
    """The family of a model configuration.

    Parameters
    ----------
    cfg : AnyModelConfig
        A model configuration; its ``name`` is looked up in :data:`FAMILIES_BY_MODEL`.

    Returns
    -------
    Family
        The registered family object (one instance per family).

    Raises
    ------
    ValueError
        If ``cfg.name`` is not a registered model name.
    """
    try:
        return FAMILIES_BY_MODEL[cfg.name]
    except KeyError:
        raise ValueError(f"unknown model {cfg.name!r}; known: {sorted(FAMILIES_BY_MODEL)}") from None


def _register() -> None:
    from brainseg.families.brebisson2015 import BREBISSON2015
    from brainseg.families.chen2018 import CHEN2018
    from brainseg.families.ganaye2018 import GANAYE2018
    from brainseg.families.wachinger2018 import WACHINGER2018

    for name in ("basenet", "ganaye2018"):
        FAMILIES_BY_MODEL[name] = GANAYE2018
    FAMILIES_BY_MODEL["deepnat"] = WACHINGER2018
    FAMILIES_BY_MODEL["brebisson2015"] = BREBISSON2015
    FAMILIES_BY_MODEL["mixnet"] = CHEN2018


_register()
