"""Every public function, class and method of brainseg has a numpydoc docstring that documents what it takes.

The brief asks each public function and class for a numpydoc docstring with its parameters, what it returns or
yields, and the errors it raises. ``numpydoc.validate`` (the numpydoc project's own checker) finds the missing
sections; the one rule numpydoc does not check, a ``Raises`` section for a function whose own body raises, is an
AST walk here. Run ``python tests/test_docstrings.py [module prefix]`` to list the gaps of one part of the tree.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import sys
import textwrap
import warnings

import pytest

numpydoc_validate = pytest.importorskip(
    "numpydoc.validate", reason="numpydoc is a test dependency: pip install -e '.[test]'"
)

#: numpydoc's checks that the brief asks for: a docstring at all (GL08), every parameter documented (PR01),
#: no documented parameter the signature lacks (PR02), a Returns section (RT01), a Yields section (YD01).
CHECKS = ("GL08", "PR01", "PR02", "RT01", "YD01")


def public_objects(prefix: str = "brainseg") -> list[tuple[str, object]]:
    """The qualified names and objects of brainseg's public functions, classes and their public methods.

    Parameters
    ----------
    prefix : str
        Only modules whose dotted name starts with this.

    Returns
    -------
    list of (str, object)
        ``("brainseg.io.nifti.load_volume", load_volume)`` and so on, defined in (not imported into) each module.
    """
    import brainseg

    found = []
    modules = [brainseg.__name__] + [m.name for m in pkgutil.walk_packages(brainseg.__path__, "brainseg.")]
    for name in modules:
        if name.endswith("__main__") or not name.startswith(prefix):
            continue
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isfunction(obj):
                found.append((f"{name}.{attr}", obj))
            elif inspect.isclass(obj):
                found.append((f"{name}.{attr}", obj))
                for member, value in vars(obj).items():
                    if member.startswith("_") or member in _DATACLASS_GENERATED:
                        continue
                    if inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod)):
                        found.append((f"{name}.{attr}.{member}", value))
    return found


#: Methods ``dataclasses`` writes itself.
_DATACLASS_GENERATED = {"__init__", "__repr__", "__eq__"}


def _raises_itself(function) -> bool:
    """Whether the function's own body (not a nested function's) has a ``raise`` statement."""
    function = inspect.unwrap(getattr(function, "__func__", function))
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return False
    tree = ast.parse(source).body[0]
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Raise) and node.exc is not None:  # a bare ``raise`` re-raises: no new error
            return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def docstring_gaps(qualified: str, obj) -> list[str]:
    """What the docstring of one public object lacks.

    Parameters
    ----------
    qualified : str
        The object's dotted name, which ``numpydoc.validate.validate`` imports.
    obj : object
        The function, class or method itself.

    Returns
    -------
    list of str
        ``"CODE message"`` per gap; empty when the docstring is complete. A dataclass may document its fields
        under ``Attributes`` instead of ``Parameters``; a ``forward`` method's return is the network's output,
        which its class docstring describes, so it needs no Returns section.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpydoc warns about our own "Deviations from the paper" section
        result = numpydoc_validate.validate(qualified)
    gaps = []
    for code, message in result["errors"]:
        if code not in CHECKS:
            continue
        if code == "RT01" and qualified.endswith(".forward"):
            continue
        if code in ("PR01", "PR02") and inspect.isclass(obj) and dataclasses.is_dataclass(obj):
            if "Attributes" in (obj.__doc__ or "") or "Parameters" in (obj.__doc__ or ""):
                continue
        gaps.append(f"{code} {message}")
    if not inspect.isclass(obj) and _raises_itself(obj) and "Raises\n" not in inspect.cleandoc(obj.__doc__ or ""):
        gaps.append("RS01 the body raises but the docstring has no Raises section")
    return gaps


def all_gaps(prefix: str = "brainseg") -> list[str]:
    """Every gap under ``prefix``, one line each: ``qualified.name: CODE message``.

    Parameters
    ----------
    prefix : str
        Only modules whose dotted name starts with this.

    Returns
    -------
    list of str
        Empty when every public object under the prefix is documented.
    """
    return [f"{name}: {gap}" for name, obj in public_objects(prefix) for gap in docstring_gaps(name, obj)]


def test_every_public_object_has_a_complete_numpydoc_docstring():
    gaps = all_gaps()
    assert not gaps, f"{len(gaps)} docstring gaps:\n" + "\n".join(gaps)


def test_the_checker_finds_each_kind_of_gap(tmp_path, monkeypatch):
    # the test above would pass vacuously if the checker found nothing
    module = tmp_path / "docgap_example.py"
    module.write_text(
        textwrap.dedent(
            '''
            def undocumented(x):
                return x

            def no_parameters(x):
                """Twice x."""
                return 2 * x

            def no_raises(x):
                """Check x.

                Parameters
                ----------
                x : int
                    A number.
                """
                if x < 0:
                    raise ValueError("negative")

            def complete(x):
                """Twice x.

                Parameters
                ----------
                x : int
                    A number.

                Returns
                -------
                int
                    2x.

                Raises
                ------
                ValueError
                    If x is negative.
                """
                if x < 0:
                    raise ValueError("negative")
                return 2 * x
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    example = importlib.import_module("docgap_example")
    codes = {
        name: [gap.split()[0] for gap in docstring_gaps(f"docgap_example.{name}", getattr(example, name))]
        for name in ("undocumented", "no_parameters", "no_raises", "complete")
    }
    assert codes["undocumented"] == ["GL08"]
    assert sorted(codes["no_parameters"]) == ["PR01", "RT01"]
    assert codes["no_raises"] == ["RS01"]
    assert codes["complete"] == []


if __name__ == "__main__":
    lines = all_gaps(sys.argv[1] if len(sys.argv) > 1 else "brainseg")
    print("\n".join(lines))
    print(f"{len(lines)} gaps")
