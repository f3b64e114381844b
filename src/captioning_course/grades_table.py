"""The grades table: one row per student's file, one column per exercise, written as
`grades.csv` and `grades.md` with the exercises' titles and the profile they ran under."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

from captioning_course.profiles import Profile
from captioning_course.submissions import Lesson

CSV_FILE, MARKDOWN_FILE = "grades.csv", "grades.md"


@dataclasses.dataclass
class Row:
    file: str  # path relative to the submissions folder
    lesson: str = ""
    grades: dict[int, str] = dataclasses.field(default_factory=dict)  # by exercise number
    exercises: int = 0  # how many the lesson has; 0 when the file was not graded
    seconds: float = 0.0
    note: str = ""
    grader_error: bool = False  # the grader itself failed on this file

    @property
    def passed(self) -> str:
        if not self.exercises:
            return ""
        return f"{sum(grade == 'pass' for grade in self.grades.values())}/{self.exercises}"


def _columns(lessons: dict[str, Lesson]) -> int:
    return max((len(lesson.exercises) for lesson in lessons.values()), default=0)


def table(rows: list[Row], columns: int) -> list[list[str]]:
    """Header and rows: file, lesson, Exercise 1..N, passed, seconds, note."""
    header = ["file", "lesson", *(f"Exercise {n}" for n in range(1, columns + 1)),
              "passed", "seconds", "note"]
    body = []
    for row in rows:
        grades = [row.grades.get(n, "") for n in range(1, columns + 1)]
        body.append([row.file, row.lesson, *grades, row.passed, f"{row.seconds:.1f}", row.note])
    return [header, *body]


def markdown(rows: list[Row], lessons: dict[str, Lesson], profile: Profile,
             extra_parameters: dict[str, Any]) -> str:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    header, *body = table(rows, _columns(lessons))
    header[header.index("seconds")] = "wall time"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cells in body:
        cells[-2] = f"{float(cells[-2]):.0f} s"
        lines.append("| " + " | ".join(escape(cell) for cell in cells) + " |")
    settings = ", ".join(f"{name}={value!r}" for name, value in extra_parameters.items())
    lines += ["", f"Profile {profile.name}" + (f", with -p {settings}" if settings else "") + "."]
    graded = {row.lesson for row in rows if row.exercises}
    for name in sorted(graded):
        lines += ["", f"Exercises of {name}:"]
        lines += [f"- {e.title} (check.{e.check})" for e in lessons[name].exercises]
    return "\n".join(lines) + "\n"


def write_grades(rows: list[Row], lessons: dict[str, Lesson], out: Path, profile: Profile,
                 extra_parameters: dict[str, Any]) -> None:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(table(rows, _columns(lessons)))
    (out / CSV_FILE).write_text(text.getvalue())
    (out / MARKDOWN_FILE).write_text(markdown(rows, lessons, profile, extra_parameters))
