"""Static checks of the Slicer module, run without Slicer (Slicer itself cannot be installed on CI machines).

- The .ui is valid Qt Designer XML: every non-Qt widget class is declared in <customwidgets>, every scene-aware
  widget gets the scene through a <connection>, every name the module code uses as ``self.ui.<name>`` exists, and
  every ``SlicerParameterName`` is a parameter-node field of a type its widget can represent.
- The module CMakeLists lists every file that must ship (a file left out silently does not ship) and nothing that does
  not exist, with the layout the module file's sys.path handling expects.
- The module file compiles, defines the module/parameter node/widget/test classes, imports no torch (GUI thread),
  and calls the logic and Job only with methods and keyword arguments they define.
- The top-level CMakeLists carries the extension metadata the extension index needs and stops, with a clear
  message, on a Slicer older than 5.10 (the check itself is run with `cmake -P`).
"""

from __future__ import annotations

import ast
import py_compile
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR_NAME = "MedDINOv3Slicer"
MODULE_DIR = ROOT / MODULE_DIR_NAME
MODULE_FILE = MODULE_DIR / "MedDINOv3Slicer.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedDINOv3Slicer.ui"
LOGIC_FILE = MODULE_DIR / "MedDINOv3SlicerLib" / "logic.py"
JOBS_FILE = MODULE_DIR / "MedDINOv3SlicerLib" / "jobs.py"
CONTROLLER_FILE = MODULE_DIR / "MedDINOv3SlicerLib" / "controller.py"
DEPENDENCIES_FILE = MODULE_DIR / "MedDINOv3SlicerLib" / "dependencies.py"

# Widgets that need the MRML scene (the template passes it with a mrmlSceneChanged -> setMRMLScene connection).
SCENE_WIDGET_PREFIXES = ("qMRML", "qSlicer")
# parameterNodeWrapper's GUI connectors: widget class -> what the annotation must be
CONNECTOR_TYPES = {
    "qMRMLNodeComboBox": "node",
    "QComboBox": "choice",
    "QLineEdit": "str",
    "QCheckBox": "bool",
    "QSpinBox": "int",
    "QDoubleSpinBox": "float",
    "ctkSliderWidget": "float",
    "ctkDirectoryButton": "path",
    "ctkPathLineEdit": "path",
}


# ------------------------------------------------------------------------------------------------------- helpers


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _ui_root() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def _ui_widgets(root: ET.Element) -> list[ET.Element]:
    return list(root.iter("widget"))


def _ui_names() -> set[str]:
    return {w.get("name") for w in _ui_widgets(_ui_root())}


def _strip_cmake_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def parse_cmake_lists(text: str) -> dict[str, list[str]]:
    """``set(NAME item item ...)`` blocks of a CMakeLists as name -> items, with ${MODULE_NAME} expanded."""
    text = _strip_cmake_comments(text)
    variables: dict[str, list[str]] = {}
    for name, body in re.findall(r"\bset\(\s*(\w+)\s+([^)]*)\)", text):
        variables[name] = body.split()
    module_name = variables.get("MODULE_NAME", [""])[0]
    return {name: [item.replace("${MODULE_NAME}", module_name) for item in items] for name, items in variables.items()}


def _macro_call(text: str, macro: str) -> str:
    match = re.search(rf"\b{macro}\(([^)]*)\)", _strip_cmake_comments(text))
    assert match, f"{macro}(...) not found in {MODULE_DIR_NAME}/CMakeLists.txt"
    return " ".join(match.group(1).split())


def files_that_must_ship(root: Path) -> set[str]:
    """Repository-relative paths of every file the extension needs at run time."""

    def files(folder: str, pattern: str) -> set[str]:
        return {
            p.relative_to(root).as_posix()
            for p in (root / folder).rglob(pattern)
            if p.is_file() and "__pycache__" not in p.parts
        }

    required = files(MODULE_DIR_NAME, "*.py") | files("MedDINOv3Core", "*.py") | files("training", "*.py")
    required |= files("training/configs", "*.yaml")
    required |= files(f"{MODULE_DIR_NAME}/Resources/UI", "*.ui") | files(f"{MODULE_DIR_NAME}/Resources/Icons", "*.png")
    required |= {p.relative_to(root).as_posix() for p in (root / "Resources").glob("*.json")}
    required |= files("Resources/models", "*")  # the registry's bundled (embedded) models
    return required


def shipping_problems(root: Path) -> list[str]:
    """What is wrong with the module CMakeLists' file lists under ``root`` (empty when nothing is)."""
    text = (root / MODULE_DIR_NAME / "CMakeLists.txt").read_text(encoding="utf-8")
    lists = parse_cmake_lists(text)
    problems = []
    for name in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES", "BUNDLED_PYTHON_SCRIPTS", "BUNDLED_RESOURCES"):
        items = lists.get(name)
        if not items:
            problems.append(f"{name} is missing or empty")
            continue
        if items != sorted(items) and name != "MODULE_PYTHON_SCRIPTS":
            problems.append(f"{name} is not sorted")
        if name == "MODULE_PYTHON_SCRIPTS" and items[1:] != sorted(items[1:]):
            problems.append(f"{name} is not sorted (after the module file)")
        if len(set(items)) != len(items):
            problems.append(f"{name} lists a file twice")
        for item in items:
            if ".." in Path(item).parts or Path(item).is_absolute():
                problems.append(f"{name}: {item} would be copied outside qt-scripted-modules and not installed")
    module_items = lists.get("MODULE_PYTHON_SCRIPTS", []) + lists.get("MODULE_PYTHON_RESOURCES", [])
    bundled_items = lists.get("BUNDLED_PYTHON_SCRIPTS", []) + lists.get("BUNDLED_RESOURCES", [])
    listed = {f"{MODULE_DIR_NAME}/{item}" for item in module_items} | set(bundled_items)
    for item in bundled_items:
        if item.startswith(f"{MODULE_DIR_NAME}/"):
            problems.append(f"{item} belongs in the module's own lists (it would land in a sub-folder)")
    for item in lists.get("MODULE_PYTHON_SCRIPTS", []) + lists.get("BUNDLED_PYTHON_SCRIPTS", []):
        if not item.endswith(".py"):
            problems.append(f"{item}: SCRIPTS takes .py files (data files go in the RESOURCES lists)")
    problems += [f"listed but does not exist: {path}" for path in sorted(p for p in listed if not (root / p).is_file())]
    problems += [f"not listed, so it would not ship: {p}" for p in sorted(files_that_must_ship(root) - listed)]
    return problems


def _copy_project(tmp_path: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in (MODULE_DIR_NAME, "MedDINOv3Core", "training", "Resources"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=ignore)
    return tmp_path


# ------------------------------------------------------------------------------------------------------------ .ui


def test_ui_is_qt_designer_xml_with_unique_names():
    root = _ui_root()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert root.findtext("class") == top.get("name") == "MedDINOv3Slicer"
    assert top.get("class") == "qMRMLWidget"  # uiWidget.setMRMLScene(...) in the Widget needs it
    names = [w.get("name") for w in _ui_widgets(root)] + [layout.get("name") for layout in root.iter("layout")]
    assert all(names), "every widget and layout needs a name"
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"duplicate object names: {duplicates}"


def test_ui_custom_widgets_are_declared():
    root = _ui_root()
    declared = {}
    for custom in root.find("customwidgets"):
        cls, extends, header = custom.findtext("class"), custom.findtext("extends"), custom.findtext("header")
        assert cls and extends and header == f"{cls}.h", f"incomplete <customwidget> {cls}"
        declared[cls] = extends
    for cls, extends in declared.items():
        assert extends.startswith("Q") or extends in declared, f"{cls} extends an undeclared class {extends}"
    used = {w.get("class") for w in _ui_widgets(root)}
    undeclared = {cls for cls in used if not cls.startswith("Q") and cls not in declared}
    assert not undeclared, f"custom widget classes used but not declared in <customwidgets>: {undeclared}"
    containers = {c.findtext("class") for c in root.find("customwidgets") if c.findtext("container") == "1"}
    assert {"ctkCollapsibleButton", "qMRMLWidget"} <= containers


def test_ui_scene_widgets_get_the_scene():
    root = _ui_root()
    top = root.find("widget").get("name")
    names = _ui_names()
    receivers = set()
    for connection in root.find("connections"):
        sender, receiver = connection.findtext("sender"), connection.findtext("receiver")
        assert sender in names and receiver in names, f"connection {sender} -> {receiver} names a missing widget"
        if connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)":
            assert sender == top and connection.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
            receivers.add(receiver)
    needing = {
        w.get("name")
        for w in _ui_widgets(root)
        if w.get("class").startswith(SCENE_WIDGET_PREFIXES) and w.get("name") != top
    }
    assert needing <= receivers, f"widgets that never get the MRML scene: {needing - receivers}"


def test_ui_has_the_sections_and_progress_controls():
    root = _ui_root()
    sections = [w.findtext("property/string") for w in _ui_widgets(root) if w.get("class") == "ctkCollapsibleButton"]
    assert sections == ["Inputs", "Segment", "Explore features", "Fine-tune", "Export"]
    classes = {w.get("name"): w.get("class") for w in _ui_widgets(root)}
    assert classes["progressBar"] == "QProgressBar" and classes["statusLabel"] == "QLabel"
    assert classes["cancelButton"] == "QPushButton" and classes["similarityPlaceWidget"] == "qSlicerMarkupsPlaceWidget"


@pytest.mark.skipif(
    not (shutil.which("pyside6-uic") or shutil.which("uic")), reason="no Qt uic on this machine (optional check)"
)
def test_ui_compiles_with_qt_uic(tmp_path):
    uic = shutil.which("pyside6-uic") or shutil.which("uic")
    result = subprocess.run([uic, str(UI_FILE), "-o", str(tmp_path / "ui.out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------------ module file


def test_module_file_compiles_and_defines_the_classes(tmp_path):
    py_compile.compile(str(MODULE_FILE), cfile=str(tmp_path / "module.pyc"), doraise=True)
    classes = _classes(_module_tree())

    def bases(name: str) -> set[str]:
        return {b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in classes[name].bases}

    assert "ScriptedLoadableModule" in bases("MedDINOv3Slicer")
    assert {"ScriptedLoadableModuleWidget", "VTKObservationMixin"} <= bases("MedDINOv3SlicerWidget")
    assert "ScriptedLoadableModuleTest" in bases("MedDINOv3SlicerTest")
    decorators = [ast.unparse(d) for d in classes["MedDINOv3SlicerParameterNode"].decorator_list]
    assert decorators == ["parameterNodeWrapper"]
    tests = [f.name for f in classes["MedDINOv3SlicerTest"].body if isinstance(f, ast.FunctionDef)]
    assert "runTest" in tests and any(name.startswith("test_") for name in tests)


def test_module_metadata():
    source = MODULE_FILE.read_text(encoding="utf-8")
    init = next(f for f in _classes(_module_tree())["MedDINOv3Slicer"].body if isinstance(f, ast.FunctionDef))
    assigned = {
        ast.unparse(node.targets[0]): ast.unparse(node.value) for node in ast.walk(init) if isinstance(node, ast.Assign)
    }
    assert "MedDINOv3" in assigned["self.parent.title"]
    assert "'Segmentation'" in assigned["self.parent.categories"]
    for field in ("self.parent.contributors", "self.parent.helpText", "self.parent.acknowledgementText"):
        assert field in assigned
    assert "2509.02379" in assigned["self.parent.acknowledgementText"]
    assert "licence" in assigned["self.parent.acknowledgementText"]
    for resource in re.findall(r'"((?:UI|Icons)/[^"]+)"', source) + ["Icons/MedDINOv3Slicer.png"]:
        assert (MODULE_DIR / "Resources" / resource).is_file(), f"module file uses a missing resource {resource}"


def test_module_file_imports_no_torch():
    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.Import):
            assert not any(alias.name.split(".")[0] == "torch" for alias in node.names)
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "torch"


def test_every_ui_name_the_code_uses_exists():
    used = {
        node.attr
        for node in ast.walk(_module_tree())
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    assert used, "the Widget uses no self.ui widgets?"
    missing = used - _ui_names()
    assert not missing, f"self.ui names missing from {UI_FILE.name}: {sorted(missing)}"


def _module_constants(tree: ast.Module) -> dict[str, object]:
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return constants


def test_parameter_names_in_ui_are_fields_of_a_fitting_type():
    tree = _module_tree()
    constants = _module_constants(tree)
    fields = {
        node.target.id: node
        for node in _classes(tree)["MedDINOv3SlicerParameterNode"].body
        if isinstance(node, ast.AnnAssign)
    }
    bound = 0
    for widget in _ui_widgets(_ui_root()):
        prop = widget.find("property[@name='SlicerParameterName']")
        if prop is None:
            continue
        bound += 1
        name, cls = prop.findtext("string"), widget.get("class")
        assert name in fields, f"{widget.get('name')} binds {name!r}, which is no parameter node field"
        annotation = ast.unparse(fields[name].annotation)
        kind = CONNECTOR_TYPES.get(cls)
        assert kind, f"parameterNodeWrapper has no connector for {cls} ({widget.get('name')})"
        if kind == "node":
            assert annotation.startswith("vtkMRML"), annotation
        elif kind == "choice":
            match = re.fullmatch(r"Annotated\[(\w+), Choice\((\w+)\)\]", annotation)
            assert match, f"{name}: a QComboBox needs Annotated[type, Choice(...)], got {annotation}"
            choices = constants[match.group(2)]
            assert ast.literal_eval(fields[name].value) in choices, f"{name}'s default is not one of its choices"
        elif kind == "path":
            assert annotation == "Path", annotation
        else:
            assert annotation == kind, f"{name}: {cls} needs {kind}, got {annotation}"
    assert bound >= 5


# --------------------------------------------------------------------------------- the Widget and the logic fit


def _class_methods(path: Path, class_name: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    cls = _classes(tree).get(class_name)
    assert cls is not None, f"{path.name} defines no class {class_name}"
    return {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}


def _check_call(call: ast.Call, function: ast.FunctionDef, where: str) -> None:
    args = function.args
    positional = [a.arg for a in args.posonlyargs + args.args][1:]  # without self
    keywords = positional + [a.arg for a in args.kwonlyargs]
    assert len(call.args) <= len(positional) or args.vararg, f"{where}: too many positional arguments"
    for keyword in call.keywords:
        assert keyword.arg is None or keyword.arg in keywords or args.kwarg, f"{where}: unknown keyword {keyword.arg}"
    required = len(positional) - len(args.defaults)
    given = len(call.args) + sum(1 for k in call.keywords if k.arg in positional[:required])
    assert given >= required, f"{where}: {required} required arguments, {given} given"


def test_widget_calls_the_controller_as_it_is_defined():
    """The Widget only wires: what it calls on the controller exists with those arguments (the controller itself,
    the logic and the self-test are tested by behaviour on slicer-core)."""
    methods = _class_methods(CONTROLLER_FILE, "ModuleController")
    properties = {"busy", "models", "point_node"}
    widget = _classes(_module_tree())["MedDINOv3SlicerWidget"]
    calls = 0
    for node in ast.walk(widget):
        if not isinstance(node, ast.Attribute) or ast.unparse(node.value) not in ("self.controller", "c"):
            continue
        assert node.attr in methods or node.attr in properties, f"ModuleController has no {node.attr}"
        calls += 1
    for node in ast.walk(widget):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if ast.unparse(node.func.value) in ("self.controller", "c") and node.func.attr in methods:
                _check_call(node, methods[node.func.attr], f"controller.{node.func.attr}")
    assert calls >= 15
    assert "logic" not in {n.attr for n in ast.walk(widget) if isinstance(n, ast.Attribute)}, "wiring only"


def test_module_file_is_thin():
    assert len(MODULE_FILE.read_text(encoding="utf-8").splitlines()) <= 350  # wiring only: the rest is in the Lib


def test_job_interface_the_widget_uses_exists():
    job = _class_methods(JOBS_FILE, "Job")
    for name in ("start", "poll", "running", "cancel", "result", "wait"):
        assert name in job, f"Job.{name} is used by the Widget/self-test but not defined"
    jobs_tree = ast.parse(JOBS_FILE.read_text(encoding="utf-8"))
    assert {"JobCancelled", "JobError"} <= set(_classes(jobs_tree))
    progress_tree = ast.parse((ROOT / "MedDINOv3Core" / "progress.py").read_text(encoding="utf-8"))
    event = {n.target.id for n in _classes(progress_tree)["ProgressEvent"].body if isinstance(n, ast.AnnAssign)}
    assert {"stage", "done", "total", "message"} <= event


# ------------------------------------------------------------------------------------------------------ CMake


def test_module_cmake_lists_every_file_that_ships():
    assert shipping_problems(ROOT) == []


def test_module_cmake_macro_calls():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    module = _macro_call(text, "slicerMacroBuildScriptedModule")
    for part in ("NAME ${MODULE_NAME}", "SCRIPTS ${MODULE_PYTHON_SCRIPTS}", "RESOURCES ${MODULE_PYTHON_RESOURCES}"):
        assert part in module
    assert "WITH_GENERIC_TESTS" in module
    assert parse_cmake_lists(text)["MODULE_NAME"] == [MODULE_DIR_NAME] == [MODULE_FILE.stem]
    bundled = _macro_call(text, "ctkMacroCompilePythonScript")
    for part in (
        'SCRIPTS "${BUNDLED_PYTHON_SCRIPTS}"',
        'RESOURCES "${BUNDLED_RESOURCES}"',
        "SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/..",
        "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}",
        "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}",
        "NO_INSTALL_SUBDIR",
    ):
        assert part in bundled, f"ctkMacroCompilePythonScript lacks {part}"
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in " ".join(_strip_cmake_comments(text).split())


def test_shipping_check_catches_unlisted_and_missing_files(tmp_path):
    root = _copy_project(tmp_path)
    before = set(shipping_problems(root))  # empty when the real tree passes (checked above); compared as a diff here
    (root / "MedDINOv3Core" / "new_feature.py").write_text("", encoding="utf-8")
    (root / "training" / "configs" / "new_recipe.yaml").write_text("", encoding="utf-8")
    (root / MODULE_DIR_NAME / "MedDINOv3SlicerLib" / "helpers.py").write_text("", encoding="utf-8")
    (root / "Resources" / "models" / "meddinov3-phantom-tiny" / "README.md").write_text("", encoding="utf-8")
    (root / "MedDINOv3Core" / "atomic.py").unlink()
    assert set(shipping_problems(root)) - before == {
        "listed but does not exist: MedDINOv3Core/atomic.py",
        f"not listed, so it would not ship: {MODULE_DIR_NAME}/MedDINOv3SlicerLib/helpers.py",
        "not listed, so it would not ship: MedDINOv3Core/new_feature.py",
        "not listed, so it would not ship: Resources/models/meddinov3-phantom-tiny/README.md",
        "not listed, so it would not ship: training/configs/new_recipe.yaml",
    }


def test_shipping_check_refuses_paths_outside_the_module_folder(tmp_path):
    root = _copy_project(tmp_path)
    cmake = root / MODULE_DIR_NAME / "CMakeLists.txt"
    text = cmake.read_text(encoding="utf-8")
    cmake.write_text(text.replace("  MedDINOv3Core/atomic.py\n", "  ../MedDINOv3Core/atomic.py\n", 1), encoding="utf-8")
    problems = shipping_problems(root)
    assert any("would be copied outside qt-scripted-modules" in p for p in problems)
    assert "not listed, so it would not ship: MedDINOv3Core/atomic.py" in problems


def test_module_file_path_handling_matches_both_layouts():
    """The sys.path set-up finds MedDINOv3Core beside the module file (installed) or one folder up (checkout)."""
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert "for folder in (here, here.parent):" in source
    assert (MODULE_DIR.parent / "MedDINOv3Core").is_dir()  # the checkout layout
    # the installed layout: everything bundled lands directly under the module file's folder
    lists = parse_cmake_lists((MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert "MedDINOv3Core/__init__.py" in lists["BUNDLED_PYTHON_SCRIPTS"]
    assert "training/__main__.py" in lists["BUNDLED_PYTHON_SCRIPTS"]
    assert "Resources/models.json" in lists["BUNDLED_RESOURCES"]  # MedDINOv3Core.resource_files: ../Resources


# -------------------------------------------------------------------------------------------- top-level CMake


def test_top_level_cmake_has_the_extension_metadata():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    flat = " ".join(_strip_cmake_comments(text).split())
    for statement in (
        "project(MedDINOv3)",
        'set(EXTENSION_CATEGORY "Segmentation")',
        'set(EXTENSION_DEPENDS "PyTorch")',
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        f"add_subdirectory({MODULE_DIR_NAME})",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert statement in flat, f"top-level CMakeLists.txt lacks {statement}"
    assert flat.startswith("cmake_minimum_required(")
    for name in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        match = re.search(rf'set\(EXTENSION_{name} "([^"]+)"\)', flat)
        assert match, f"EXTENSION_{name} is not set"
        if name in ("ICONURL", "SCREENSHOTURLS"):
            for url in match.group(1).split():
                relative = url.split("/main/", 1)[1]
                assert (ROOT / relative).is_file(), f"EXTENSION_{name} points at a missing file {relative}"
    assert (ROOT / "LICENSE").is_file()


# Supported Slicer versions: 5.10 and newer (README.md). find_package(Slicer) sets Slicer_VERSION_MAJOR/MINOR from
# Slicer's SlicerConfigVersion.cmake (PACKAGE_VERSION "@Slicer_VERSION@" = "<major>.<minor>", CMake/SlicerVersion.cmake,
# v5.10.0 and v5.12.3 alike).
MINIMUM_SLICER_VERSION = "5.10"
VERSION_GUARD_START = "set(MedDINOv3_MINIMUM_SLICER_VERSION"
VERSION_GUARD_END = "include(${Slicer_USE_FILE})"


def _version_guard() -> str:
    """The top-level CMakeLists' Slicer version check: from its minimum-version set() up to include(Slicer_USE_FILE)."""
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    start = text.find(VERSION_GUARD_START)
    end = text.find(VERSION_GUARD_END, max(start, 0))
    assert 0 <= start < end, "top-level CMakeLists.txt has no Slicer version check before include(${Slicer_USE_FILE})"
    return text[start:end]


def test_top_level_cmake_requires_slicer_5_10():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    flat = " ".join(_strip_cmake_comments(text).split())
    assert f'set(MedDINOv3_MINIMUM_SLICER_VERSION "{MINIMUM_SLICER_VERSION}")' in flat
    # checked after find_package(Slicer) (which defines the version) and before Slicer's settings are used
    assert flat.index("find_package(Slicer REQUIRED)") < flat.index(VERSION_GUARD_START)
    assert flat.index(VERSION_GUARD_START) < flat.index(VERSION_GUARD_END) < flat.index("add_subdirectory(")
    guard = " ".join(_strip_cmake_comments(_version_guard()).split())
    for name in ("Slicer_VERSION_MAJOR", "Slicer_VERSION_MINOR", "VERSION_LESS", "message(FATAL_ERROR"):
        assert name in guard
    description = re.search(r'set\(EXTENSION_DESCRIPTION "([^"]+)"\)', flat).group(1)
    assert f"Slicer {MINIMUM_SLICER_VERSION} or newer" in description


def _run_version_guard(tmp_path: Path, cmake: str, variables: dict[str, str]) -> subprocess.CompletedProcess:
    script = tmp_path / "guard.cmake"
    lines = [f'set({name} "{value}")' for name, value in variables.items()]
    script.write_text("\n".join([*lines, _version_guard(), 'message(STATUS "version check passed")', ""]))
    return subprocess.run([cmake, "-P", str(script)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("major", "minor", "passes"),
    [("5", "8", False), ("5", "9", False), ("4", "11", False), ("5", "10", True), ("5", "12", True), ("6", "0", True)],
)
def test_top_level_cmake_version_guard_runs(tmp_path, major, minor, passes):
    """The real CMake code, run in script mode with the variables find_package(Slicer) would set."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    variables = {
        "Slicer_VERSION_MAJOR": major,
        "Slicer_VERSION_MINOR": minor,
        "Slicer_VERSION": f"{major}.{minor}",
        "Slicer_DIR": "/opt/Slicer-build",
    }
    result = _run_version_guard(tmp_path, cmake, variables)
    output = " ".join((result.stdout + result.stderr).split())
    if passes:
        assert result.returncode == 0, output
        assert "version check passed" in output
    else:
        assert result.returncode != 0
        assert "version check passed" not in output
        assert f"requires 3D Slicer {MINIMUM_SLICER_VERSION} or newer" in output, output
        assert f"is Slicer {major}.{minor}" in output, output  # says which version was found
        assert "/opt/Slicer-build" in output, output


def test_top_level_cmake_version_guard_stops_when_the_version_is_unknown(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    result = _run_version_guard(tmp_path, cmake, {"Slicer_DIR": "/opt/Slicer-build"})
    assert result.returncode != 0
    assert "is Slicer unknown" in " ".join(result.stderr.split())


# Members the Widget inherits from ScriptedLoadableModuleWidget and VTKObservationMixin.
WIDGET_BASE_MEMBERS = {"layout", "parent", "resourcePath", "addObserver", "removeObserver", "removeObservers"}


def test_widget_uses_only_members_it_defines_or_inherits():
    """A typo in ``self.<name>`` would only show up in Slicer at click time; catch it here."""
    widget = _classes(_module_tree())["MedDINOv3SlicerWidget"]
    methods = {f.name for f in widget.body if isinstance(f, ast.FunctionDef)}
    assigned = {
        target.attr
        for node in ast.walk(widget)
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        for target in ([*target.elts] if isinstance(target, ast.Tuple) else [target])
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
    }
    used = {
        node.attr
        for node in ast.walk(widget)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
    }
    unknown = used - methods - assigned - WIDGET_BASE_MEMBERS
    assert not unknown, f"the Widget uses self.{sorted(unknown)}, which it neither defines nor inherits"


def test_slicer_installs_the_same_package_versions_as_pyproject():
    """dependencies.PIP_REQUIREMENTS (what the module installs into Slicer's Python) = pyproject's dependencies,
    minus what Slicer itself or the PyTorch extension provides; a requirement changed in one place only fails here."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    assignment = next(
        node
        for node in ast.parse(DEPENDENCIES_FILE.read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PIP_REQUIREMENTS" for t in node.targets)
    )
    in_slicer = set(ast.literal_eval(assignment.value).values())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    provided = ("torch", "numpy", "vtk")  # the PyTorch extension; Slicer itself
    expected = {req for req in project if not req.lower().startswith(provided)}
    assert in_slicer == expected
