"""The CSV readers behind --csv (a forecast's series, a classifier's rows, predict, view):
separators, the line numbers that errors name, and empty rows."""
import numpy as np
import pytest

from rnnkit.train import data
from rnnkit.train.errors import UserError
from rnnkit.train.tasks import classify


def _file(tmp_path, text, name="f.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("sep", [",", "\t", ";", "|"])
def test_each_separator_reads_the_same_columns(tmp_path, sep):
    text = sep.join(["date", "level", "other"]) + "\n" + "".join(
        sep.join([f"d{i}", f"{i * 0.5}", f"{-i}"]) + "\n" for i in range(6))
    values, labels = data.read_csv_column(_file(tmp_path, text), "level")
    np.testing.assert_array_equal(values, [i * 0.5 for i in range(6)])
    assert labels == [f"d{i}" for i in range(6)]
    cases = classify.read_rows(_file(tmp_path, text.replace("d", ""), "rows.csv"), 1)
    assert [c.ravel().tolist() for c in cases][1] == [1.0, 0.5, -1.0]


def test_separator_inside_quotes_does_not_count(tmp_path):
    path = _file(tmp_path, '"price, in $";"volume"\n"1.5";2\n"2.5";3\n')
    values, _ = data.read_csv_column(path, "price, in $")
    np.testing.assert_array_equal(values, [1.5, 2.5])


def test_one_column_reads_without_a_separator(tmp_path):
    values, labels = data.read_csv_column(_file(tmp_path, "x\n3\n4\n5\n"), None)
    np.testing.assert_array_equal(values, [3, 4, 5])
    assert labels == ["1", "2", "3"]


def test_an_empty_row_between_values_is_a_missing_value_named_by_its_line(tmp_path):
    path = _file(tmp_path, "x\n1\n2\n\n3\n")
    with pytest.raises(UserError, match=r"row 4 is empty"):
        data.read_csv_column(path, "x")
    with pytest.raises(UserError, match=r"row 3 is empty"):
        data.read_csv_column(_file(tmp_path, "a,b\n1,2\n,\n3,4\n", "two.csv"), "a")


def test_empty_rows_around_the_data_are_dropped(tmp_path):
    values, _ = data.read_csv_column(_file(tmp_path, "\n\nx\n1\n2\n\n\n"), "x")
    np.testing.assert_array_equal(values, [1, 2])


def test_errors_name_the_files_own_line(tmp_path):
    """Lines are counted in the file: after leading empty rows and a quoted field over two
    lines; the classifier's reader skips empty rows between cases and still names the line."""
    with pytest.raises(UserError, match=r"row 7, column 'x': 'oops' is not a number"):
        data.read_csv_column(_file(tmp_path, '\n\nx,note\n1,"two\nlines"\n2,b\noops,c\n'), "x")
    with pytest.raises(UserError, match=r"row 5: 'bad' is not a number"):
        classify.read_rows(_file(tmp_path, "1,2\n\n3,4\n\nbad,5\n", "rows.csv"), 1)


def test_a_decimal_comma_gets_a_hint(tmp_path):
    with pytest.raises(UserError, match=r"'1,5' is not a number \(a decimal comma"):
        data.read_csv_column(_file(tmp_path, "a;b\n1,5;2\n"), "a")
    with pytest.raises(UserError, match=r"'1,234.5' is not a number$"):
        data.read_csv_column(_file(tmp_path, 'a;b\n"1,234.5";2\n', "thousands.csv"), "a")


def test_a_file_of_empty_cells_has_no_rows(tmp_path):
    with pytest.raises(UserError, match="has no row with a value"):
        data.read_csv_column(_file(tmp_path, ",,\n ,\n"), None)
    with pytest.raises(UserError, match="has no row with a value"):
        classify.read_rows(_file(tmp_path, ",,\n", "rows.csv"), 1)


def test_a_header_that_starts_with_its_separator(tmp_path):
    """An index column without a name (pandas' to_csv with sep='\\t'): the first row starts
    with the separator, which must not be taken for leading space."""
    values, labels = data.read_csv_column(_file(tmp_path, "\tlevel\n0\t1.5\n1\t2.5\n"), "level")
    np.testing.assert_array_equal(values, [1.5, 2.5])
    assert labels == ["0", "1"]
