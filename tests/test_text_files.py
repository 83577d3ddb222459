"""Every list, CSV and JSON file the kit reads accepts a UTF-8 byte-order mark and CRLF line ends, and a file
that is not UTF-8 text or not valid JSON is one line naming the file and the fix (issue 22, text files).

Fixtures are written as Excel ("CSV UTF-8") and Windows Notepad write them: ``\\xef\\xbb\\xbf`` first, ``\\r\\n``
line ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marginnce_kit.cli import UsageError, run_main
from marginnce_kit.data.annotations import load_id_list, load_vggss_annotations, parse_flickr_xml
from marginnce_kit.io import TextFileError, read_csv_rows, read_json, read_jsonl, read_text
from marginnce_kit.prepare.ids import read_ids
from marginnce_kit.training.options import config_file_values, read_config_file

BOM = b"\xef\xbb\xbf"
IDS = ["zpWuikVorYg_000032", "--8puiAGLhs_000030", "clip_c"]


def windows_file(path: Path, text: str) -> Path:
    """``text`` written as a Windows tool writes it: a BOM, then UTF-8 with CRLF line ends."""
    path.write_bytes(BOM + text.replace("\n", "\r\n").encode("utf-8"))
    return path


def test_read_text_drops_the_bom_and_reads_crlf_and_cr_as_newlines(tmp_path: Path) -> None:
    path = windows_file(tmp_path / "a.txt", "é\nb\n")
    assert read_text(path) == "é\nb\n"
    (tmp_path / "mac.txt").write_bytes(b"a\rb\r")
    assert read_text(tmp_path / "mac.txt") == "a\nb\n"
    (tmp_path / "plain.txt").write_bytes(b"a\nb")  # unchanged without a BOM or CRs
    assert read_text(tmp_path / "plain.txt") == "a\nb"
    assert read_text(windows_file(tmp_path / "bom_only.txt", "")) == ""


def test_a_bom_no_longer_sticks_to_the_first_id_of_a_list(tmp_path: Path) -> None:
    txt = windows_file(tmp_path / "vggss_144k.txt", "\n".join(IDS) + "\n\n")
    csv = windows_file(tmp_path / "vggss_test.csv", "".join(f"{i},class {n}\n" for n, i in enumerate(IDS)))
    js = windows_file(tmp_path / "ids.json", json.dumps(IDS, indent=1))
    for path in (txt, csv, js):
        assert read_ids(path) == IDS, path
    for path in (txt, csv):
        assert load_id_list(path) == IDS, path
    assert read_csv_rows(csv)[0] == [IDS[0], "class 0"]


def test_annotation_files_with_a_bom_and_crlf(tmp_path: Path) -> None:
    entries = [{"file": IDS[0], "class": "dog", "bbox": [[0.1, 0.2, 0.5, 0.6]]}]
    vggss = windows_file(tmp_path / "vggss.json", json.dumps(entries, indent=2))
    assert load_vggss_annotations(vggss) == {IDS[0]: [[0.1, 0.2, 0.5, 0.6]]}
    xml = windows_file(tmp_path / "1.xml", "<?xml version='1.0' encoding='utf-8'?>\n<annotation>\n<object>\n"
                       "<bbox><name>a</name><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bbox>\n"
                       "</object>\n</annotation>\n")
    assert parse_flickr_xml(xml) == [[1, 2, 30, 40]]


def test_config_and_preset_files_with_a_bom_and_crlf(tmp_path: Path) -> None:
    config = windows_file(tmp_path / "config.json", json.dumps({"epochs": 3, "margin": -0.2}, indent=2))
    assert config_file_values(config) == {"epochs": 3, "margin": -0.2}
    pytest.importorskip("yaml")
    preset = windows_file(tmp_path / "preset.yaml", "epochs: 3\nmargin: -0.2\n")
    assert read_config_file(preset) == {"epochs": 3, "margin": -0.2}


def test_jsonl_with_crlf(tmp_path: Path) -> None:
    path = windows_file(tmp_path / "metrics.jsonl", '{"epoch": 1, "loss": 2.5}\n\n{"epoch": 2, "loss": 2.0}\n')
    assert read_jsonl(path) == [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.0}]


def _one_line(error: BaseException, *parts: str) -> None:
    text = str(error)
    assert "\n" not in text and all(p in text for p in parts), text


@pytest.mark.parametrize("reader, what, name", [
    (read_ids, "id list", "ids.txt"), (read_ids, "ids file", "ids.json"), (load_id_list, "id list", "test.csv"),
    (load_vggss_annotations, "annotations", "vggss.json"), (read_config_file, "--config", "config.json"),
])
def test_a_file_that_is_not_utf8_is_one_line_naming_it_and_the_fix(tmp_path: Path, reader, what: str,
                                                                    name: str) -> None:
    path = tmp_path / name
    path.write_bytes("id_é,1\n".encode("latin-1"))  # a legacy code page
    with pytest.raises(TextFileError) as info:
        reader(path)
    _one_line(info.value, what, str(path), "not UTF-8 text", "offset 3", "save it as UTF-8")
    assert isinstance(info.value, ValueError) and isinstance(info.value, UsageError)
    path.write_bytes("\ufeff[]".encode("utf-16"))  # Notepad's "Unicode"
    with pytest.raises(TextFileError, match="UTF-16 text"):
        reader(path)


@pytest.mark.parametrize("reader, what", [(read_ids, "ids file"), (load_vggss_annotations, "annotations"),
                                          (read_config_file, "--config"), (read_json, "")])
def test_a_file_that_is_not_json_is_one_line_naming_it_and_the_place(tmp_path: Path, reader, what: str) -> None:
    path = windows_file(tmp_path / "bad.json", '[\n  {"file": "a",}\n]\n')
    with pytest.raises(TextFileError) as info:
        reader(path)
    _one_line(info.value, what, str(path), "not valid JSON", "line 2 column", "fix the JSON")


def test_a_bad_jsonl_line_and_a_bad_xml_are_named(tmp_path: Path) -> None:
    log = windows_file(tmp_path / "metrics.jsonl", '{"epoch": 1}\n{"epoch": \n')
    with pytest.raises(TextFileError, match=r"metrics.jsonl.*not valid JSON .* at line 2\)"):
        read_jsonl(log)
    xml = windows_file(tmp_path / "2.xml", "<annotation><object></annotation>")
    with pytest.raises(TextFileError, match=r"flickr annotation .*2.xml.*not valid XML"):
        parse_flickr_xml(xml)


def test_the_prepare_command_prints_a_bad_ids_file_in_one_line(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    from marginnce_kit.prepare import cli as prepare_cli

    ids = tmp_path / "ids.json"
    ids.write_bytes(b'["a", ')
    (tmp_path / "videos").mkdir()
    with pytest.raises(SystemExit) as info:
        run_main(prepare_cli.main, ["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "out"),
                                    "--ids", str(ids)], prog="marginnce-prepare")
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("marginnce-prepare: error: ids file") and "not valid JSON" in err, err
