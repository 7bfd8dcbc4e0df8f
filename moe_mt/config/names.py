"""Architecture naming: ``model.arch`` from ``model.family`` and ``model.size`` and back, and what
the model's family gives the keys a recipe leaves null (its criterion, its ``model.moe``
defaults)."""

import difflib
from typing import Dict

from omegaconf import DictConfig, OmegaConf

from moe_mt.errors import MoeMtError
from moe_mt.models import families


def architecture(family: str, size: str) -> str:
    """The architecture of ``family`` at ``size`` by moemt's naming rule:
    ``<family>_transformer_<size>``, the dense baseline's ``moemt_transformer_<size>``."""
    return f"{'moemt' if family == 'dense' else family}_transformer_{size}"


def _family_and_size(arch: str) -> tuple:
    """(family, size) that :func:`architecture` names ``arch`` by; (None, None) for another
    architecture (fairseq's own ``transformer_iwslt_de_en``)."""
    prefix, sep, size = arch.partition("_transformer_")
    if not sep or not prefix or not size:
        return None, None
    return ("dense" if prefix == "moemt" else prefix), size


def family_default_origin(family: str) -> str:
    """The origin ``moemt config`` names for a value the model family's declaration gave."""
    return f"default of family {family}"


def fill_family_defaults(cfg: DictConfig, origins: Dict[str, str]) -> None:
    """Write what the model's family (:class:`moe_mt.models.families.Family`) gives a key left
    null: its criterion (``train.criterion``) and its ``model.moe`` defaults, so that a run's
    config.yaml, its fingerprints and ``moemt config`` hold the values the model trains with.
    An architecture of no family (fairseq's own) trains with fairseq's label-smoothed CE."""
    family = families.family_of_arch(cfg.model.arch)
    if cfg.train.criterion is None:
        cfg.train.criterion = family.criterion if family else families.DENSE_CRITERION
        if family:
            origins.setdefault("train.criterion", family_default_origin(family.name))
    for option in family.all_options() if family else ():
        if option.recipe and option.default is not None and cfg.model.moe.get(option.name) is None:
            cfg.model.moe[option.name] = option.default
            origins[f"model.moe.{option.name}"] = family_default_origin(family.name)


def latest_names_architecture(model: DictConfig, piece: DictConfig) -> tuple:
    """After ``piece`` is merged: whichever it sets, ``model.arch`` or ``model.family`` /
    ``model.size``, names the architecture from now on. A piece that sets the arch clears family
    and size (they are read from it at the end); one that sets the family or the size clears the
    arch, keeping what the arch said of the other (``model.arch=thor_transformer_iwslt`` then
    ``model.family=switch``: ``switch_transformer_iwslt``). Returns the keys it cleared or
    filled in (``("family", "size")``, ``("arch", "size")``, ...)."""
    given = piece.get("model") if isinstance(piece.get("model"), DictConfig) else {}
    given = OmegaConf.to_container(given, resolve=False) if given else {}  # as the piece says
    names_arch = given.get("arch") is not None
    names_parts = "family" in given or "size" in given
    if names_arch and not names_parts:
        model.family = model.size = None
        return ("family", "size")
    if names_parts and not names_arch and model.arch is not None:
        family, size = _family_and_size(model.arch)
        model.family = model.family if "family" in given else family
        model.size = model.size if "size" in given else size
        model.arch = None
        return ("arch", *(key for key in ("family", "size") if key not in given))
    return ()


def resolve_architecture(model: DictConfig, origin: str) -> None:
    """Fill ``model.arch`` from ``model.family`` and ``model.size`` (dense and demo when unset),
    or, when the arch is given, check them against it and fill them in from it. A recipe of a
    data set sets the size, a family piece the family; the last source that names the
    architecture decides (:func:`latest_names_architecture`)."""
    family, size = model.family, model.size
    if model.arch is None:
        known = [f.name for f in families.families()]
        if family is not None and family not in known:
            closest = difflib.get_close_matches(family, known, n=1)
            hint = f"closest: {closest[0]}; " if closest else ""
            raise MoeMtError(
                f"{origin}: model.family={family} is not a model family ({hint}"
                f"one of {', '.join(known)}; `moemt ls archs`)"
            )
        model.arch = architecture(family or "dense", size or "demo")
        return _fill(model, model.arch)
    implied = dict(zip(("family", "size"), _family_and_size(model.arch), strict=True))
    for key, given in (("family", family), ("size", size)):
        if given is not None and given != implied[key]:
            raise MoeMtError(
                f"{origin}: model.{key}={given} contradicts model.arch={model.arch} (one source "
                "names both; give the arch, or the family and size)"
            )
    _fill(model, model.arch)


def _fill(model: DictConfig, arch: str) -> None:
    family, size = _family_and_size(arch)
    model.family = model.family or family
    model.size = model.size or size
