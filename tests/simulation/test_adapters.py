"""Dataset adapters on small files written here in the published column layouts."""
import json
import os

import numpy as np
import pytest

from crocodile.errors import UserError
from crocodile.model.features import FeatureConfig
from crocodile.simulation import adapters, dataset

# The merged per-impression KuaiRand-1K layout (42 columns, Scenario-Wise-Rec kuairand_sample.csv).
KUAIRAND_HEADER = (
    "user_id,video_id,is_click,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,tab,"
    "user_active_degree,is_lowactive_period,is_live_streamer,is_video_author,follow_user_num,"
    "follow_user_num_range,fans_user_num,fans_user_num_range,friend_user_num,friend_user_num_range,"
    "register_days,register_days_range," + ",".join(f"onehot_feat{i}" for i in range(18))
    + ",video_type,visible_status,server_width,server_height"
).split(",")
ALICCP_HEADER = ["click", "purchase"] + list(adapters.ALICCP_SPARSE) + list(adapters.ALICCP_DENSE)


def kuairand_row(user, video, click, tab, follow=10):
    values = {c: "0" for c in KUAIRAND_HEADER}
    values.update(user_id=str(user), video_id=str(video), is_click=str(click), tab=str(tab),
                  play_time_ms="5000", follow_user_num=str(follow), user_active_degree="2",
                  onehot_feat3="949", server_width="720.0")
    return [values[c] for c in KUAIRAND_HEADER]


def aliccp_row(click, purchase, domain, user=7, item=11):
    values = {c: "3" for c in ALICCP_HEADER}
    values.update({"click": str(click), "purchase": str(purchase), "301": str(domain), "101": str(user),
                   "205": str(item), "D109_14": "0.25"})
    return [values[c] for c in ALICCP_HEADER]


def write_csv(path, header, rows):
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(row) + "\n")
    return str(path)


def kuairand_file(tmp_path, name="kr.csv"):
    # Raw tabs 0..14: only 1, 0, 2, 4, 6 survive; tab 3 and 5 must not sneak in as re-indexed ids.
    rows = [kuairand_row(u, 100 + u, u % 2, tab) for u, tab in enumerate([1, 0, 2, 4, 6, 3, 5, 14, 1, 6])]
    return write_csv(tmp_path / name, KUAIRAND_HEADER, rows)


def test_kuairand_keeps_top_tabs_by_raw_value_and_maps_them_in_order(tmp_path):
    out = str(tmp_path / "out")
    assert adapters.convert("kuairand", [kuairand_file(tmp_path)], out) == 7
    logs = dataset.read_logs(out)
    # Rows (user: raw tab): 0:1, 1:0, 2:2, 3:4, 4:6, 8:1, 9:6; tabs 3, 5, 14 dropped.
    assert logs["user_id"].tolist() == ["0", "1", "2", "3", "4", "8", "9"]
    assert logs["domain_id"].tolist() == [1, 0, 2, 3, 4, 1, 4]
    assert logs["click"].tolist() == [0, 1, 0, 1, 0, 0, 1]
    assert logs["item_id"].tolist()[:2] == ["100", "101"]
    for leaky in ("play_time_ms", "duration_ms", "profile_stay_time", "comment_stay_time", "is_click", "tab"):
        assert leaky not in logs
    config = FeatureConfig.load(os.path.join(out, "feature_config.json"))
    assert config.num_domains == 5
    assert config.numeric == ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
    assert "user_active_degree" in config.categorical and "onehot_feat17" in config.categorical
    assert "server_width" in config.categorical and "tab" not in config.categorical
    assert logs["follow_user_num"].dtype == np.float32 and logs["user_active_degree"][0] == "2"
    assert logs["onehot_feat3"][0] == "949" and logs["server_width"][0] == "720.0"
    source = json.load(open(os.path.join(out, adapters.SOURCE_FILE)))
    assert source["rows_read"] == 10 and source["rows_outside_domains"] == 3


def test_kuairand_raw_log_with_time_column_gets_timestamps(tmp_path):
    header = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "long_view", "tab", "is_rand"]
    rows = [["5", "9", "20220408", "1600", "1649404800123", "1", "0", "1", "0", "0"],
            ["6", "9", "20220408", "1600", "1649404801999", "0", "0", "0", "7", "1"]]
    out = str(tmp_path / "out")
    assert adapters.convert("kuairand", [write_csv(tmp_path / "log_standard.csv", header, rows)], out) == 1
    logs = dataset.read_logs(out)
    assert logs["timestamp"].tolist() == [1649404800] and logs["domain_id"].tolist() == [0]
    assert not {"is_like", "long_view", "is_rand", "time_ms"} & set(logs)
    assert FeatureConfig.load(os.path.join(out, "feature_config.json")).categorical == ("user_id", "item_id")


def test_aliccp_domains_labels_and_dropped_rows(tmp_path):
    rows = [aliccp_row(1, 1, 1, user=1), aliccp_row(0, 0, 2, user=2), aliccp_row(0, 1, 3, user=3),
            aliccp_row(1, 0, 3, user=4)]
    out = str(tmp_path / "out")
    assert adapters.convert("aliccp", [write_csv(tmp_path / "ali.csv", ALICCP_HEADER, rows)], out) == 3
    logs = dataset.read_logs(out)
    assert logs["user_id"].tolist() == ["1", "2", "4"]      # click=0 & purchase=1 dropped
    assert logs["domain_id"].tolist() == [0, 1, 2]
    assert logs["click"].tolist() == [1, 0, 1] and logs["purchase"].tolist() == [1, 0, 0]
    assert logs["item_id"].tolist() == ["11"] * 3
    config = FeatureConfig.load(os.path.join(out, "feature_config.json"))
    assert config.num_domains == 3 and len(config.numeric) == 8
    # 23 sparse fields: 101 -> user_id, 205 -> item_id, 301 -> domain_id, 20 others as f<field>.
    assert len(config.categorical) == 22 and "f121" in config.categorical and "f301" not in config.categorical
    assert np.allclose(logs["D109_14"], 0.25) and logs["f121"][0] == "3"


def test_shards_split_rows(tmp_path):
    rows = [aliccp_row(i % 2, 0, 1 + i % 3, user=i) for i in range(30)]
    out = str(tmp_path / "out")
    adapters.convert("aliccp", [write_csv(tmp_path / "a.csv", ALICCP_HEADER, rows)], out, num_shards=3)
    assert len(dataset.log_files(out)) == 3
    assert sorted(dataset.read_logs(out)["user_id"].astype(int).tolist()) == list(range(30))


def _expect_error(tmp_path, fmt, inputs, *fragments):
    out = tmp_path / "out"
    with pytest.raises(UserError) as error:
        adapters.convert(fmt, inputs, str(out))
    for fragment in fragments:
        assert fragment in str(error.value)
    assert not out.exists()  # nothing partial
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p]
    return str(error.value)


def test_missing_column(tmp_path):
    header = [c for c in KUAIRAND_HEADER if c != "tab"]
    path = write_csv(tmp_path / "kr.csv", header, [[v for c, v in zip(KUAIRAND_HEADER, kuairand_row(1, 2, 0, 1)) if c != "tab"]])
    _expect_error(tmp_path, "kuairand", [path], "kr.csv", "'tab'", "line 1")


def test_non_binary_label_names_file_column_and_row(tmp_path):
    rows = [kuairand_row(1, 2, 0, 1), kuairand_row(1, 3, 0, 1), kuairand_row(1, 4, 2, 1)]
    _expect_error(tmp_path, "kuairand", [write_csv(tmp_path / "kr.csv", KUAIRAND_HEADER, rows)],
                  "kr.csv", "'is_click'", "row 3", "'2'")
    rows = [aliccp_row(1, 0, 1), aliccp_row(1, "yes", 1)]
    _expect_error(tmp_path, "aliccp", [write_csv(tmp_path / "a.csv", ALICCP_HEADER, rows)],
                  "a.csv", "'purchase'", "row 2")


def test_bad_domain_value(tmp_path):
    _expect_error(tmp_path, "kuairand", [write_csv(tmp_path / "kr.csv", KUAIRAND_HEADER, [kuairand_row(1, 2, 0, "x")])],
                  "'tab'", "row 1")
    _expect_error(tmp_path, "aliccp", [write_csv(tmp_path / "a.csv", ALICCP_HEADER, [aliccp_row(1, 0, 4)])],
                  "'301'", "row 1")


def test_bad_numeric_value(tmp_path):
    rows = [kuairand_row(1, 2, 0, 1), kuairand_row(1, 2, 0, 1, follow="many")]
    _expect_error(tmp_path, "kuairand", [write_csv(tmp_path / "kr.csv", KUAIRAND_HEADER, rows)],
                  "'follow_user_num'", "row 2")


def test_empty_and_header_only_and_unreadable_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _expect_error(tmp_path, "aliccp", [str(empty)], "empty.csv", "empty file")
    header_only = write_csv(tmp_path / "h.csv", ALICCP_HEADER, [])
    _expect_error(tmp_path, "aliccp", [header_only], "h.csv", "no data rows")
    _expect_error(tmp_path, "aliccp", [str(tmp_path / "nope.csv")], "nope.csv", "not a readable file")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"click,purchase\n\xff\xfe\x00\x81,\xc3\n")
    _expect_error(tmp_path, "aliccp", [str(binary)], "bin.csv")


def test_no_rows_in_kept_domains(tmp_path):
    path = write_csv(tmp_path / "kr.csv", KUAIRAND_HEADER, [kuairand_row(1, 2, 0, 3), kuairand_row(1, 2, 0, 9)])
    _expect_error(tmp_path, "kuairand", [path], "no rows left", "'tab'")


def test_unknown_format_and_existing_output(tmp_path):
    path = kuairand_file(tmp_path)
    _expect_error(tmp_path, "movielens", [path], "movielens", "kuairand")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="already exists"):
        adapters.convert("kuairand", [path], str(out))
    assert os.listdir(out) == ["keep.txt"]


def test_second_file_with_other_columns_fails_without_output(tmp_path):
    first = kuairand_file(tmp_path, "a.csv")
    second = write_csv(tmp_path / "b.csv", ALICCP_HEADER, [aliccp_row(1, 0, 1)])
    _expect_error(tmp_path, "kuairand", [first, second], "b.csv", "missing column")
