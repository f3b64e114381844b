"""Grade students' labs: run each notebook headless and record every exercise's self-check.

    python -m captioning_course.grade FOLDER [--profile smoke|rehearsal|full] [--out DIR]
                                      [-p NAME VALUE ...] [--timeout SECONDS] [--lessons DIR]
                                      [--data-dir DIR] [--sample-images-dir DIR] [--no-sandbox]

Every `*.ipynb` under FOLDER (subfolders included; hidden folders such as
`.ipynb_checkpoints` and the output folder skipped) is one student's file, named in the table
by its path relative to FOLDER. For each file the grader:

1. recognises the lesson it is a lab of, among the authored lessons in `--lessons`
   (`notebooks/`): the lesson whose code cells it shares the most of, compared line by line
   without surrounding blanks, a self-check cell counting by the check it calls
   (`check.tokenizer(...)`, whatever its arguments) and the cells that hold exercises not
   counting at all (students rewrite them). At least half of the lesson's cells must be
   recognised; the file's name only breaks ties. Neither the file's name nor an exercise
   title decides, so a renamed or fully answered lab is still recognised;
2. runs a copy of it (outputs cleared, the course kernel named) as the runner runs that
   lesson: the profile's overrides for the lesson, then `-p`, the data slice and weights
   prepared, a separate papermill process per file with the profile's time limit (or
   `--timeout`), killed with its kernel and everything it started when over it. Unlike the
   runner, a cell that raises does not stop the run, so every self-check is tried. The
   kernel works in the file's output folder, never in FOLDER: students' files are only read.
   papermill and the kernel run in a sandbox (`sandbox`): the system, the course and the
   data read-only, the file's output folder its only writable one, the instructor's home,
   FOLDER and OUT hidden, no network, no environment but the lesson's, and limits on
   memory, processes and open files. A row's note says when the sandbox refused or
   stopped something. `--no-sandbox` runs them with the instructor's rights instead;
3. reads each exercise's self-check cell in the executed copy (the cell that calls the
   check the lesson calls after that exercise) and writes one of:
   - `pass`: the cell ran without error and the check printed its PASS line;
   - `fail: REASON`: the check raised SelfCheckFailed (REASON is its one line), or the cell
     ran but printed no PASS line;
   - `not reached: ERROR`: the check could not judge the answer. ERROR is
     NotImplementedError when the exercise is still unanswered (its placeholder raised,
     in its own cell or when the check called it), else the error the check cell raised,
     e.g. NameError when an earlier cell's error left a name undefined;
   - `missing`: the file has no cell calling that check (the student deleted it);
   - `timeout`: the time limit stopped the run before the check cell ran.

Files that cannot be graded get a row saying why: not a notebook, a lesson that cannot be
recognised, a lesson without exercises, a copy papermill cannot run. Which lesson a file is,
and what its exercises are, is read by `submissions`.

OUT (default `build/grades/`) receives `grades.csv` and `grades.md`, one row per file with
one column per exercise, the number passed, the wall time and a note; `executed/` keeps
each file's executed copy under its relative path, and `outputs/` each run's OUTPUT_DIR and
papermill's messages (`papermill.log`). The markdown table is printed at the end with the
total wall time.

Exit code 0 when every file has its row, whatever the students' results; 1 when the grader
itself failed on a file (its row says "grader error"); 2 with one line when grading cannot
start (no such folder, no notebook in it, unusable lessons, parameters or output folder, no
sandbox); 130 on Ctrl-C or SIGTERM, after writing the rows graded so far.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat

from captioning_course import execution, parameters
from captioning_course.grades_table import CSV_FILE, MARKDOWN_FILE, Row, write_grades
from captioning_course.kernel import KERNELSPEC
from captioning_course.profiles import Profile
from captioning_course.sandbox import (
    Limits,
    Sandbox,
    SandboxUnavailable,
    check_available,
    grading_sandbox,
)
from captioning_course.submissions import (
    GradingError,
    Lesson,
    find_submissions,
    identify,
    load_lessons,
    self_check_cells,
)

# How a self-check names its exercise at the start of its message: "Exercise 4 (masked_loss): "
CHECK_PREFIX = re.compile(r"^Exercise \d+(?: \([^)]*\))?: ")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colours of IPython's tracebacks
# In each file's output folder: the copy that runs, its executed copy until the run ends, its
# kernel's start-up files and, in the sandbox, its feature cache.
RUN_FOLDER = ".grading"
SANDBOX_LIMITS = Limits()  # the course's largest lesson peaks near 3 GB


# Running --------------------------------------------------------------------------------------

def _clean_copy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The file as it will run: no outputs left from the student's session, the course kernel."""
    copy = nbformat.from_dict(json.loads(json.dumps(nb)))
    # Cells a papermill run of the student's left behind; this run adds its own.
    copy.cells = [cell for cell in copy.cells if not execution.added_by_papermill(cell)]
    for cell in copy.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("papermill", None)
    copy.metadata["kernelspec"] = dict(KERNELSPEC)
    copy.metadata.pop("papermill", None)
    return copy


def _write_temporary(nb: nbformat.NotebookNode, folder: Path, lesson: str) -> Path:
    """`nb` written as FOLDER/LESSON.ipynb: the runner finds a lesson's overrides by file name."""
    path = folder / f"{lesson}.ipynb"
    nbformat.write(nb, path)
    return path


# Reading the executed copy --------------------------------------------------------------------

def _errors(cell: Any) -> list[Any]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def _ran(cell: Any) -> bool:
    status = cell.get("metadata", {}).get("papermill", {}).get("status")
    return cell.get("execution_count") is not None and status != "running"


def _printed(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def _unanswered(number: int, cells: list[Any]) -> bool:
    """Whether the placeholder of exercise `number` raised in any of `cells`: in a cell of
    its own, or inside the check that called it (then the check's error names it)."""
    placeholder = re.compile(rf"NotImplementedError: Exercise {number}:")
    for cell in cells:
        for error in _errors(cell):
            shown = f"{error.get('ename')}: {error.get('evalue', '')}"
            traceback = ANSI.sub("", "\n".join(error.get("traceback", [])))
            if placeholder.search(shown) or placeholder.search(traceback):
                return True
    return False


def grade_executed(lesson: Lesson, executed: nbformat.NotebookNode | None, status: str,
                   reason: str, located: dict[tuple[str, int], int]) -> dict[int, str]:
    """Each exercise's grade from the executed copy (None if papermill left none).

    `located` gives the index, in the student's file, of each self-check cell it has.
    """
    ran = ([c for c in executed.cells if not execution.added_by_papermill(c)]
           if executed is not None else [])
    # What papermill's own error was called, e.g. DeadKernelError when the kernel died.
    ename = reason.split(":", 1)[0] if ":" in reason else "run stopped"
    stopped = "timeout" if status == "timeout" else f"not reached: {ename}"
    grades = {}
    for exercise in lesson.exercises:
        place = (exercise.check, exercise.occurrence)
        shared = sum((e.check, e.occurrence) == place for e in lesson.exercises) > 1
        index = located.get(place)
        if index is None:
            grades[exercise.number] = "missing"
            continue
        cell = ran[index] if index < len(ran) else None
        if cell is None or not _ran(cell):
            grades[exercise.number] = stopped
            continue
        errors = _errors(cell)
        if errors and _unanswered(exercise.number, ran[:index + 1]):
            grades[exercise.number] = "not reached: NotImplementedError"
        elif shared:  # the check judges its exercises in turn and names each
            grades[exercise.number] = _shared_grade(exercise.number, cell, errors)
        elif errors and errors[0].get("ename") == "SelfCheckFailed":
            problem = CHECK_PREFIX.sub("", execution.first_line(errors[0].get("evalue", "")))
            grades[exercise.number] = f"fail: {problem}"
        elif errors:
            grades[exercise.number] = f"not reached: {errors[0].get('ename', 'error')}"
        elif any(line.startswith("PASS") for line in _printed(cell).splitlines()):
            grades[exercise.number] = "pass"
        else:
            grades[exercise.number] = "fail: the self-check cell printed no PASS line"
    return grades


def _shared_grade(number: int, cell: Any, errors: list[dict]) -> str:
    """The grade of exercise `number` from a self-check cell that checks several in turn."""
    if any(line.startswith(f"PASS Exercise {number} ") for line in _printed(cell).splitlines()):
        return "pass"
    if errors and errors[0].get("ename") == "SelfCheckFailed":
        line = execution.first_line(errors[0].get("evalue", ""))
        if line.startswith(f"Exercise {number} ") or line.startswith(f"Exercise {number}:"):
            return f"fail: {CHECK_PREFIX.sub('', line)}"
        earlier = re.match(r"Exercise (\d+)", line)
        return f"not reached: Exercise {earlier.group(1)} failed first" if earlier else \
            f"fail: {line}"
    if errors:
        return f"not reached: {errors[0].get('ename', 'error')}"
    return f"fail: the self-check cell printed no PASS line for Exercise {number}"


# Grading --------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Planned:
    row: Row
    lesson: Lesson | None = None
    nb: nbformat.NotebookNode | None = None


def _plan(path: Path, folder: Path, lessons: dict[str, Lesson]) -> _Planned:
    row = Row(path.relative_to(folder).as_posix())
    try:
        nb = nbformat.read(path, as_version=4)
        if not isinstance(nb.get("cells"), list):
            raise ValueError("it has no list of cells")
    except UnicodeDecodeError:
        row.note = "not a notebook: not UTF-8 text"
        return _Planned(row)
    except Exception as exc:  # whatever the bytes are, the file gets its row
        row.note = f"not a notebook: {execution.first_line(exc)[:200]}"
        return _Planned(row)
    lesson, why = identify(nb, lessons, path.stem)
    if lesson is None:
        row.lesson, row.note = "?", why
        return _Planned(row)
    row.lesson = lesson.name
    if not lesson.exercises:
        row.note = f"{lesson.name} has no exercises to grade"
        return _Planned(row)
    row.exercises = len(lesson.exercises)
    return _Planned(row, lesson, nb)


def _check_lesson_parameters(lessons: list[Lesson], profile: Profile, data_dir: Path,
                             out: Path, sample_images_dir: Path,
                             extra_parameters: dict[str, Any]) -> None:
    """Refuse, before any kernel starts, parameters that the lessons themselves reject."""
    with tempfile.TemporaryDirectory() as scratch:
        for lesson in lessons:
            lab = _write_temporary(lesson.lab, Path(scratch), lesson.name)
            try:
                parameters.notebook_parameters(lab, profile, data_dir, out / "outputs",
                                               sample_images_dir, extra_parameters)
            except parameters.SetupError as exc:
                raise GradingError(str(exc).replace(str(lab), f"lesson {lesson.name}")) from None


def _run_one(planned: _Planned, profile: Profile, data_dir: Path, out: Path,
             sample_images_dir: Path, extra_parameters: dict[str, Any], limit: int,
             sandbox: tuple[Sandbox, dict] | None) -> None:
    row, lesson = planned.row, planned.lesson
    relative = Path(row.file)
    executed_path = out / "executed" / relative
    output_dir = out / "outputs" / relative.with_suffix("")
    work = output_dir / RUN_FOLDER
    path = work / f"{lesson.name}.ipynb"  # the runner finds a lesson's overrides by file name
    executed_path.unlink(missing_ok=True)  # an earlier run's copy must not be read as this one's
    copy = _clean_copy(planned.nb)
    located = self_check_cells(copy)
    start = time.monotonic()
    try:
        # Emptied first: what a student's code left there last time is not this run's, and
        # could be a link the grader would follow.
        shutil.rmtree(output_dir, ignore_errors=True)
        parameters.prepare_folder(work)
        parameters.prepare_folder(executed_path.parent)
        nbformat.write(copy, path)
        # Outside a sandbox students share one feature cache: the CNN runs once per image.
        # Inside, a cache that one student's code can write would be what the next one reads.
        cache = out / "feature_cache" if sandbox is None else work / "feature_cache"
        values = parameters.notebook_parameters(path, profile, data_dir, output_dir,
                                                sample_images_dir, extra_parameters,
                                                feature_cache_dir=cache)
    except parameters.SetupError as exc:
        row.note = f"cannot run: {str(exc).replace(str(path), row.file)}"
        row.exercises, row.grades = 0, {}
        return
    env = parameters.kernel_environment(profile, lesson.name, work)
    jail = None
    if sandbox is not None:
        jail, shared_data = sandbox[0].allowing_writes_to(output_dir.resolve()), sandbox[1]
        env = {**env, **shared_data}
    outcome = execution.execute(path, work / "executed.ipynb", values, cwd=output_dir,
                                timeout_s=limit, allow_errors=True, env=env,
                                log=output_dir / "papermill.log", sandbox=jail)
    if outcome.status == "interrupted":  # its processes are gone; the grading stops
        raise KeyboardInterrupt
    row.seconds = time.monotonic() - start
    executed = _take_executed_copy(work / "executed.ipynb", executed_path)
    row.grades = grade_executed(lesson, executed, outcome.status, outcome.reason, located)
    missing = [f"check.{e.check}(...)" for e in lesson.exercises
               if row.grades[e.number] == "missing"]
    notes = [f"no cell calls {', '.join(missing)}"] if missing else []
    if jail is not None:
        notes += _refused(jail, executed, outcome.reason)
    running = execution.running_cell(copy, executed) if executed is not None else None
    where = f" in {running}" if running else ""
    if outcome.status == "timeout":
        notes.append(f"timed out after {limit} s{where}")
    elif outcome.status == "stopped":
        notes.append(f"papermill stopped{where}: {outcome.reason}")
    if executed is None:
        notes.append("no executed copy was written")
    row.note = "; ".join(notes)


def _take_executed_copy(written: Path, kept: Path) -> nbformat.NotebookNode | None:
    """The executed copy, moved to where the grades keep it; None if there is no such file.

    A link is not followed: the student's code, which could write there, may have put one
    in its place, to another file the grader can read.
    """
    if written.is_symlink() or not written.is_file():
        return None
    os.replace(written, kept)
    try:
        return nbformat.read(kept, as_version=4)
    except (OSError, ValueError):
        return None


def _refused(jail: Sandbox, executed: nbformat.NotebookNode | None, reason: str) -> list[str]:
    """What the sandbox refused or stopped, from the errors the run left, each said once."""
    errors = [(error.get("ename", ""), error.get("evalue", ""))
              for cell in (executed.cells if executed is not None else [])
              for error in _errors(cell)]
    if reason:
        errors.append(tuple(reason.split(": ", 1)) if ": " in reason else ("", reason))
    found = (jail.refusal(ename, evalue) for ename, evalue in errors)
    return list(dict.fromkeys(note for note in found if note))


def grade(folder: Path, profile: Profile, out: Path, lessons_dir: Path, data_dir: Path,
          sample_images_dir: Path, extra_parameters: dict[str, Any] | None = None,
          timeout_s: int | None = None, progress: bool = True,
          limits: Limits | None = SANDBOX_LIMITS) -> list[Row]:
    """Grade every notebook under `folder`; write OUT/grades.csv and OUT/grades.md.

    Each file runs in a sandbox with `limits`; with None, with the caller's own rights.
    Raises GradingError before any kernel starts if grading cannot go ahead. On Ctrl-C the
    rows graded so far are written and the KeyboardInterrupt goes on.
    """
    extra_parameters = extra_parameters or {}
    if not folder.is_dir():
        raise GradingError(f"no such folder: {folder}")
    out = out.resolve()  # the sandboxed processes start in another folder
    if limits is not None:
        try:
            check_available()
        except SandboxUnavailable as exc:
            raise GradingError(str(exc)) from None
    submissions = find_submissions(folder, out)
    if not submissions:
        raise GradingError(f"no notebooks (*.ipynb) in {folder}")
    lessons = load_lessons(lessons_dir)
    parameters.prepare_folder(out)
    plans = [_plan(path, folder, lessons) for path in submissions]
    to_run = [plan for plan in plans if plan.lesson is not None]
    graded_lessons = list({plan.lesson.name: plan.lesson for plan in to_run}.values())
    _check_lesson_parameters(graded_lessons, profile, data_dir, out, sample_images_dir,
                             extra_parameters)
    if to_run:
        parameters.prepare_data(profile, [lesson.name for lesson in graded_lessons], data_dir)
    sandbox = None if limits is None else grading_sandbox(
        folder, out, data_dir, sample_images_dir, extra_parameters, limits)
    limit = profile.timeout_s if timeout_s is None else timeout_s
    rows = [plan.row for plan in plans]
    graded = 0
    try:
        for plan in to_run:
            if progress:
                print(f"[{graded + 1}/{len(to_run)}] {plan.row.file} ({plan.lesson.name}, "
                      f"{profile.name})", flush=True)
            try:
                _run_one(plan, profile, data_dir, out, sample_images_dir, extra_parameters,
                         limit, sandbox)
            except Exception as exc:  # the others are still graded; the exit code tells
                plan.row.grades, plan.row.exercises = {}, 0
                plan.row.note = f"grader error: {type(exc).__name__}: {execution.first_line(exc)}"
                plan.row.grader_error = True
            graded += 1
            if progress:
                print(f"    {plan.row.passed or '-'} passed, {plan.row.seconds:.0f} s"
                      f"{'; ' + plan.row.note if plan.row.note else ''}", flush=True)
    except KeyboardInterrupt:
        for plan in to_run[graded:]:
            plan.row.grades, plan.row.exercises = {}, 0
            plan.row.note = "not graded: interrupted"
        write_grades(rows, lessons, out, profile, extra_parameters)
        raise
    write_grades(rows, lessons, out, profile, extra_parameters)
    return rows


# Command line ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the students' notebooks (subfolders too)")
    parameters.add_run_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("build/grades"),
                        help="where grades.csv, grades.md and the executed copies go")
    parser.add_argument("--lessons", type=Path, default=Path("notebooks"),
                        help="the authored lessons the labs come from")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="run the students' code with your own rights, unconfined")
    args = parser.parse_args(argv)
    profile, extra = parameters.run_arguments(args)
    parameters.warn_without_gpu(profile)
    start = time.monotonic()
    try:
        with execution.sigterm_as_ctrl_c():
            rows = grade(args.folder, profile, args.out, args.lessons, args.data_dir,
                         args.sample_images_dir, extra, args.timeout,
                         limits=None if args.no_sandbox else SANDBOX_LIMITS)
    except (GradingError, parameters.SetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; the rows graded so far are in {args.out / MARKDOWN_FILE}")
        return 130
    print()
    print((args.out / MARKDOWN_FILE).read_text(), end="")
    print(f"\n{len(rows)} files graded in {time.monotonic() - start:.0f} s; "
          f"{args.out / CSV_FILE}, executed copies in {args.out / 'executed'}")
    failed = [row.file for row in rows if row.grader_error]
    if failed:
        print(f"error: the grader itself failed on {', '.join(failed)}: its rows say how",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
