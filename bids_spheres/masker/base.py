"""Minimal scikit-learn estimator protocol, without depending on scikit-learn.

Promise
-------
* ``get_params``/``set_params`` read and write exactly the parameters of
  ``__init__`` (whose body must store them unchanged), so that
  ``sklearn.base.clone`` and :func:`clone` (the same without scikit-learn)
  round-trip.
* ``check_is_fitted`` raises :class:`NotFittedError` (a ValueError and
  AttributeError, like scikit-learn's) until ``fit`` has set attributes ending
  in ``_``; once ``sklearn.exceptions`` has been imported (by anyone: code that
  writes ``except sklearn.exceptions.NotFittedError`` has imported it), the
  error raised is also an instance of scikit-learn's ``NotFittedError``.
* ``__sklearn_tags__`` returns scikit-learn's ``Tags`` (nilearn's input tags:
  ``niimg_like``) when scikit-learn is imported, else :class:`Tags`, a plain
  dataclass with the same fields.
* ``set_output(transform=...)`` records the container ("default", "pandas",
  "polars") in ``_sklearn_output_config`` as scikit-learn does;
  :func:`wrap_output` converts an array to it (pandas / polars imported there,
  only when asked for).

Nothing of scikit-learn, pandas or polars is imported by this module: they are
imported inside the function that needs them, or found in ``sys.modules``.
"""

from __future__ import annotations

import copy
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BaseEstimator",
    "NotFittedError",
    "Tags",
    "check_is_fitted",
    "clone",
    "wrap_output",
]

OUTPUT_CONTAINERS = ("default", "pandas", "polars")


class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit``."""


_sklearn_not_fitted: dict[type, type] = {}


def _not_fitted_error_class() -> type[NotFittedError]:
    """Ours, or a subclass of ours and scikit-learn's once scikit-learn is imported."""
    sk_exceptions = sys.modules.get("sklearn.exceptions")
    sk_error = getattr(sk_exceptions, "NotFittedError", None)
    if sk_error is None:
        return NotFittedError
    if sk_error not in _sklearn_not_fitted:
        _sklearn_not_fitted[sk_error] = type(
            "NotFittedError",
            (NotFittedError, sk_error),
            {"__module__": __name__, "__doc__": NotFittedError.__doc__},
        )
    return _sklearn_not_fitted[sk_error]


@dataclass
class InputTags:
    """Input tags (scikit-learn's ``InputTags`` fields, plus nilearn's)."""

    one_d_array: bool = False
    two_d_array: bool = True
    three_d_array: bool = False
    sparse: bool = False
    categorical: bool = False
    string: bool = False
    dict: bool = False
    positive_only: bool = False
    allow_nan: bool = False
    pairwise: bool = False
    niimg_like: bool = True
    surf_img: bool = False


@dataclass
class TargetTags:
    """Target tags (scikit-learn's ``TargetTags`` fields)."""

    required: bool = False
    one_d_labels: bool = False
    two_d_labels: bool = False
    positive_only: bool = False
    multi_output: bool = False
    single_output: bool = True


@dataclass
class TransformerTags:
    """Transformer tags (scikit-learn's ``TransformerTags`` fields)."""

    preserves_dtype: list[str] = field(default_factory=lambda: ["float64"])


@dataclass
class Tags:
    """Estimator tags without scikit-learn: the fields of ``sklearn.utils.Tags``."""

    estimator_type: str | None = "masker"
    target_tags: TargetTags = field(default_factory=TargetTags)
    transformer_tags: TransformerTags | None = field(default_factory=TransformerTags)
    classifier_tags: Any = None
    regressor_tags: Any = None
    array_api_support: bool = False
    no_validation: bool = False
    non_deterministic: bool = False
    requires_fit: bool = True
    _skip_test: bool = False
    input_tags: InputTags = field(default_factory=InputTags)


_sklearn_input_tags: dict[type, type] = {}


def masker_tags() -> Any:
    """A masker's tags: scikit-learn's ``Tags`` if scikit-learn is imported, else :class:`Tags`.

    As nilearn's maskers: estimator type "masker", no target required, input
    tags with ``niimg_like=True`` (nilearn's extension of scikit-learn's).
    """
    if "sklearn" not in sys.modules:
        return Tags()
    from sklearn import utils as sk_utils

    base = sk_utils.InputTags
    if base not in _sklearn_input_tags:
        fields = {"niimg_like": True, "surf_img": False}
        namespace = {"__annotations__": dict.fromkeys(fields, bool), **fields}
        namespace["__module__"] = __name__
        namespace["__doc__"] = "scikit-learn's InputTags plus nilearn's niimg_like and surf_img."
        _sklearn_input_tags[base] = dataclass(type("InputTags", (base,), namespace))
    return sk_utils.Tags(
        estimator_type="masker",
        target_tags=sk_utils.TargetTags(required=False),
        transformer_tags=sk_utils.TransformerTags(),
        input_tags=_sklearn_input_tags[base](),
    )


def clone(estimator: Any) -> Any:
    """A new unfitted estimator with the same parameters (``sklearn.base.clone`` without it).

    Parameters are deep-copied (nested estimators cloned), as scikit-learn does.
    """
    params = estimator.get_params(deep=False)
    new = {
        name: clone(value)
        if hasattr(value, "get_params") and not isinstance(value, type)
        else copy.deepcopy(value)
        for name, value in params.items()
    }
    out = type(estimator)(**new)
    if hasattr(estimator, "_sklearn_output_config"):  # as scikit-learn's clone keeps it
        out._sklearn_output_config = copy.deepcopy(estimator._sklearn_output_config)
    return out


def wrap_output(data: Any, estimator: Any, method: str = "transform") -> Any:
    """``data`` (2D array) in the container ``estimator.set_output`` asked for.

    Columns are ``estimator.get_feature_names_out()``. "default" returns
    ``data`` itself. Without a choice made on the estimator, scikit-learn's
    global ``transform_output`` is used when scikit-learn is imported.
    """
    config = getattr(estimator, "_sklearn_output_config", {})
    container = config.get(method)
    if container is None:
        sklearn = sys.modules.get("sklearn")
        container = sklearn.get_config().get(f"{method}_output", "default") if sklearn else None
    if container in (None, "default") or getattr(data, "ndim", 2) != 2:
        return data
    columns = list(estimator.get_feature_names_out())
    if container == "pandas":
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "set_output(transform='pandas') needs pandas: pip install pandas"
            ) from exc
        return pd.DataFrame(data, columns=columns)
    if container == "polars":
        try:
            import polars as pl
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "set_output(transform='polars') needs polars: pip install polars"
            ) from exc
        return pl.DataFrame(data, schema=columns, orient="row")
    raise ValueError(f"output container must be one of {OUTPUT_CONTAINERS}, got {container!r}")


class BaseEstimator:
    """get_params / set_params / repr from the ``__init__`` signature."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(
            name
            for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters of this estimator (and of nested estimators when ``deep``)."""
        out: dict[str, Any] = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                for key, sub in value.get_params().items():
                    out[f"{name}__{key}"] = sub
            out[name] = value
        return out

    def set_params(self, **params: Any) -> BaseEstimator:
        """Set parameters; unknown names raise ValueError listing the valid ones."""
        valid = self._get_param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, delim, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for {type(self).__name__}; "
                    f"valid parameters are: {', '.join(valid)}"
                )
            if delim:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            getattr(self, name).set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        changed = []
        for name, p in sig.parameters.items():
            if name == "self":
                continue
            value = getattr(self, name, p.default)
            try:
                same = value is p.default or bool(value == p.default)
            except Exception:
                same = False
            if not same:
                text = repr(value)
                if len(text) > 60:
                    text = text[:57] + "..."
                changed.append(f"{name}={text}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_is_fitted__(self) -> bool:
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's tags (nilearn's masker tags); see :func:`masker_tags`."""
        return masker_tags()

    def _more_tags(self) -> Any:
        """The same tags (scikit-learn < 1.6 asked ``_more_tags``; nilearn's checks compare)."""
        return self.__sklearn_tags__()

    def set_output(self, *, transform: str | None = None) -> BaseEstimator:
        """Choose the container of ``transform``'s output: "default", "pandas" or "polars".

        None leaves the choice unchanged. pandas or polars is needed only when chosen.
        """
        if transform is None:
            return self
        if transform not in OUTPUT_CONTAINERS:
            raise ValueError(
                f"set_output(transform=...) must be one of {OUTPUT_CONTAINERS} or None, "
                f"got {transform!r}"
            )
        if not hasattr(self, "_sklearn_output_config"):
            self._sklearn_output_config = {}
        self._sklearn_output_config["transform"] = transform
        return self


def check_is_fitted(estimator: BaseEstimator) -> None:
    """Raise :class:`NotFittedError` unless ``estimator`` has been fitted."""
    if not estimator.__sklearn_is_fitted__():
        raise _not_fitted_error_class()(
            f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
            "appropriate arguments before using this estimator."
        )
