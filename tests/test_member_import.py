"""Importing an existing community's members: dry run, all or nothing, numbers kept."""

from __future__ import annotations

import io

import pytest
import sqlalchemy as sa

from core.db import db
from membership.models import Community, InvitationStatus, Member
from tests.helpers import join_and_pay, submit_form

HEADER = "number,display_name,contact_kind,contact_value,joined,tier\n"
CLEAN = HEADER + (
    "5,老会员甲,phone,13800138005,2024-03-01,main\n"
    "#42,老会员乙,email,Old.Member@Example.com,2025-01-15,main\n"
)


def send(app, logged_in, content: str, button: str):
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    url = f"/admin/communities/{community_id}/import"
    return submit_form(
        logged_in,
        url,
        {"csv_file": (io.BytesIO(content.encode()), "members.csv"), button: "y"},
        content_type="multipart/form-data",
    )


def members(app) -> list[tuple]:
    with app.app_context():
        return db.session.execute(
            sa.select(Member.number_label, Member.display_name).order_by(Member.id)
        ).all()


def test_dry_run_lists_every_problem_and_changes_nothing(app, demo, logged_in):
    join_and_pay(app.test_client(), "main", contact_kind="phone", contact_value="13900139000")
    bad = HEADER + (
        "abc,名字,phone,13800138001,2024-01-01,main\n"
        "7,,phone,13800138002,2024-01-01,main\n"
        "8,甲,fax,123,2024-01-01,main\n"
        "9,乙,phone,13900139000,2024-01-01,main\n"
        "1,丙,phone,13800138003,2024-01-01,main\n"
        "10,丁,phone,13800138004,2024-13-01,main\n"
        "11,戊,phone,13800138006,2024-01-01,vip\n"
        "12,己,email,not-an-email,2024-01-01,main\n"
        "12,庚,phone,13800138007,2024-01-01,main\n"
    )
    before = members(app)
    for button in ("dry_run", "run"):
        page = send(app, logged_in, bad, button).text
        for line in range(2, 11):
            assert f"第 {line} 行：" in page, line
        assert "未导入" in page
    assert members(app) == before
    wrong_header = send(app, logged_in, "no,name\n1,x\n", "dry_run").text
    assert "表头须包含这些列：编号, 昵称, 联系方式类型, 联系方式, 加入日期, 档位" in wrong_header
    logged_in.get("/lang/en")
    english = send(app, logged_in, bad, "dry_run").text
    assert "Line 4: The contact kind must be one of: wechat, phone, email." in english
    assert "9 problems, nothing imported" in english


def test_clean_import_keeps_numbers_and_numbering_carries_on(app, demo, logged_in):
    assert "可导入 2 位成员" in send(app, logged_in, CLEAN, "dry_run").text
    assert members(app) == []  # a dry run imports nothing
    assert send(app, logged_in, CLEAN, "run").status_code == 302
    assert members(app) == [("0005", "老会员甲"), ("0042", "老会员乙")]
    with app.app_context():
        member = db.session.scalar(sa.select(Member).where(Member.number == 42))
        assert member.contact_value == "old.member@example.com"
        assert member.memberships[0].starts_at.date().isoformat() == "2025-01-14"  # UTC
        assert member.invitations[0].status is InvitationStatus.JOINED
        assert db.session.scalar(sa.select(Community.last_member_number)) == 42
    status = join_and_pay(app.test_client(), "main")
    assert members(app)[-1][0] == "0043"
    assert status
    again = send(app, logged_in, CLEAN, "run").text  # the same file twice
    assert "编号 5 已被使用" in again
    assert len(members(app)) == 3


def test_chinese_headers_in_any_order_and_chinese_contact_kinds(app, demo, logged_in):
    """A file written in Chinese imports as the English one does, on a page in either
    language."""
    chinese = (
        "档位,编号,昵称,联系方式类型,联系方式,加入日期\n"
        "main,5,老会员甲,手机,13800138005,2024-03-01\n"
        "main,42,老会员乙,邮箱,Old.Member@Example.com,2025-01-15\n"
        "main,43,老会员丙,微信,old_member_c,2025-02-01\n"
    )
    logged_in.get("/lang/en")
    assert "Dry run: 3 members can be imported" in send(app, logged_in, chinese, "dry_run").text
    assert send(app, logged_in, chinese, "run").status_code == 302
    assert members(app) == [("0005", "老会员甲"), ("0042", "老会员乙"), ("0043", "老会员丙")]
    with app.app_context():
        kinds = db.session.scalars(sa.select(Member.contact_kind).order_by(Member.id)).all()
    assert [kind.value for kind in kinds] == ["phone", "email", "wechat"]


def test_the_sample_file_speaks_the_page_language_and_imports_as_it_is(app, demo, logged_in):
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    page = logged_in.get(f"/admin/communities/{community_id}/import").text
    sample_url = f"/admin/communities/{community_id}/import/sample.csv"
    assert f'href="{sample_url}"' in page
    chinese = logged_in.get(sample_url)
    assert chinese.mimetype == "text/csv"
    text = chinese.get_data(as_text=True).lstrip("\ufeff")
    assert text.splitlines()[0] == "编号,昵称,联系方式类型,联系方式,加入日期,档位"
    assert text.splitlines()[1].split(",")[1:3] == ["读书人", "手机"]
    logged_in.get("/lang/en")
    english = logged_in.get(sample_url).get_data(as_text=True).lstrip("\ufeff")
    assert english.splitlines()[0] == HEADER.strip()
    assert english.splitlines()[1].split(",")[1:3] == ["Reader", "phone"]
    assert send(app, logged_in, text, "run").status_code == 302  # the sample imports
    assert members(app) == [("0001", "读书人"), ("0002", "书虫")]


CHINESE = (
    "档位,编号,昵称,联系方式类型,联系方式,加入日期\n"
    "main,5,老会员甲,手机,13800138005,2024-03-01\n"
    "main,42,老会员乙,邮箱,Old.Member@Example.com,2025-01-15\n"
)


def send_bytes(app, logged_in, content: bytes, button: str):
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    return submit_form(
        logged_in,
        f"/admin/communities/{community_id}/import",
        {"csv_file": (io.BytesIO(content), "members.csv"), button: "y"},
        content_type="multipart/form-data",
    )


@pytest.mark.parametrize(
    ("encoding", "delimiter"), [("gbk", ","), ("utf-16", "\t"), ("utf-8-sig", ",")]
)
def test_a_file_saved_by_excel_in_china_imports_as_it_reads(
    app, demo, logged_in, encoding, delimiter
):
    """Excel on a Chinese Windows saves "CSV" in GBK, "Unicode text" in UTF-16 with tabs:
    the names come in as they read, not as mojibake or a refusal."""
    content = CHINESE.replace(",", delimiter).encode(encoding)
    assert "试运行通过：可导入 2 位成员" in send_bytes(app, logged_in, content, "dry_run").text
    assert send_bytes(app, logged_in, content, "run").status_code == 302
    assert members(app) == [("0005", "老会员甲"), ("0042", "老会员乙")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04\x14\x00\x06\x00", "这是 Excel 工作簿，不是 CSV：请先在 Excel 中另存为 CSV。"),
        (b"number\n\x80\xff\xfe\n", "文件不是 UTF-8、UTF-16 或 GBK 编码的文本：请存为 CSV。"),
    ],
)
def test_a_workbook_or_unreadable_bytes_are_refused_saying_what_to_do(
    app, demo, logged_in, content, message
):
    page = send_bytes(app, logged_in, content, "dry_run").text
    assert message in page
    assert members(app) == []
