"""The forms prospects and admins fill in. Messages are Chinese first, English second."""

from __future__ import annotations

import re

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileAllowed, FileField, FileRequired, FileSize
from werkzeug.datastructures import FileStorage
from wtforms import (
    BooleanField,
    DateField,
    HiddenField,
    IntegerField,
    RadioField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import (
    URL,
    DataRequired,
    Email,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    Regexp,
    ValidationError,
)
from wtforms.widgets import CheckboxInput, ListWidget

from core.money import CURRENCIES, Money
from membership.models import (
    NUMBER_PATTERN,
    ContactKind,
    QuestionKind,
    ScreeningQuestion,
    TierAudience,
    TierKind,
)
from membership.platforms import PLATFORMS

REQUIRED = _l("Required")


#: Where a code can go, as a person picks it.
CONTACT_CHOICES = [
    SelectChoice(ContactKind.PHONE.value, _l("Phone")),
    SelectChoice(ContactKind.EMAIL.value, _l("E-mail")),
]
TOO_LONG = _l("Too long")


def strip_text(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


#: How each kind of contact must look.
CONTACT_RULES: dict[ContactKind, tuple[re.Pattern[str], str]] = {
    ContactKind.WECHAT: (
        re.compile(r"[A-Za-z][-_A-Za-z0-9]{5,19}", re.ASCII),
        _l("A WeChat ID has 6–20 letters, digits, - or _, starting with a letter"),
    ),
    ContactKind.PHONE: (
        re.compile(r"(\+?86)?1[3-9][0-9]{9}|\+[1-9][0-9]{6,14}", re.ASCII),
        _l("Enter an 11-digit mobile number, or a number with its country code"),
    ),
}


def coupon_code_field() -> StringField:
    """The optional coupon code a payer types before paying (see :mod:`payments.discounts`)."""
    return StringField(
        _l("Coupon code (optional)"),
        filters=[strip_text],
        validators=[Length(max=40, message=_l("Unknown coupon code"))],
        render_kw={"autocomplete": "off", "autocapitalize": "characters"},
    )


class JoinForm(FlaskForm):
    """The join page's form. What moderators recognise someone by (``wechat_id``) is asked
    apart from the channel we send to (``contact_kind`` and ``contact_value``: a phone or
    an e-mail address, proven by a code before the join goes on). Inside WeChat, where the
    silent OAuth proves the applicant, the view sets :attr:`channel_optional`: a WeChat ID
    alone will do."""

    #: Set by the view inside WeChat (see the class's docstring).
    channel_optional = False

    display_name = StringField(
        _l("Display name"),
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=40, message=_l("At most 40 characters"))],
        render_kw={"autocomplete": "nickname"},
    )
    wechat_id = StringField(
        _l("WeChat ID or group nickname"),
        filters=[strip_text],
        validators=[Length(max=64, message=_l("At most 64 characters"))],
        render_kw={"autocomplete": "off", "autocapitalize": "off"},
    )
    contact_kind = RadioField(
        _l("Where we reach you"),
        choices=CONTACT_CHOICES,
        default=ContactKind.PHONE.value,
        validators=[InputRequired(REQUIRED)],
    )
    contact_value = StringField(
        _l("Phone or e-mail"),
        filters=[strip_text],
        validators=[Length(max=254, message=TOO_LONG)],
    )
    accept_rules = BooleanField(
        _l("I have read and accept the rules"),
        validators=[DataRequired(_l("Please accept the rules"))],
    )
    coupon = coupon_code_field()
    provider = RadioField(_l("Pay with"), validators=[InputRequired(REQUIRED)])
    submission_key = HiddenField(validators=[DataRequired(), Regexp(r"^[A-Za-z0-9_-]{16,64}$")])

    def validate_contact_value(self, field: StringField) -> None:
        if not field.data:
            if not getattr(self, "channel_optional", False):
                raise ValidationError(
                    _("Enter a phone number or an e-mail address: your code goes there")
                )
            if "wechat_id" in self and not self.wechat_id.data:
                raise ValidationError(_("Enter a phone number, an e-mail address or a WeChat ID"))
            return
        kind = self.contact_kind.data
        if kind == ContactKind.EMAIL:
            Email(_("Not a valid e-mail address"))(self, field)
        elif kind in CONTACT_RULES:
            pattern, message = CONTACT_RULES[ContactKind(kind)]
            value = field.data or ""
            if kind == ContactKind.PHONE:
                value = value.replace(" ", "").replace("-", "")  # as people type them
            if not pattern.fullmatch(value):
                raise ValidationError(str(message))


class PayAgainForm(FlaskForm):
    """Pay an application's open order again, after a failure or a cancel."""

    provider = RadioField(_l("Pay with"), validators=[InputRequired(REQUIRED)])


class PayForm(PayAgainForm):
    """Pay an order nothing was tried on yet (a personal pay link, a renewal): a coupon
    code may still be applied to it."""

    coupon = coupon_code_field()


class CommunityForm(FlaskForm):
    name = StringField(
        "社群名称 · Name", filters=[strip_text], validators=[DataRequired(REQUIRED), Length(max=60)]
    )
    slug = StringField(
        "链接名 · Slug (/join/…)",
        filters=[strip_text],
        validators=[
            DataRequired(REQUIRED),
            Regexp(
                r"^[a-z0-9][a-z0-9-]{1,39}$",
                message="2–40位小写字母、数字或- · 2–40 lowercase letters, digits or -",
            ),
        ],
    )
    pitch = TextAreaField("介绍 · Pitch", validators=[Length(max=4000)])
    rules = TextAreaField("群规 · Rules", validators=[Length(max=8000)])
    currency = SelectField("币种 · Currency", choices=sorted(CURRENCIES))
    time_zone = StringField(
        "时区 · Time zone", default="Asia/Shanghai", validators=[DataRequired(REQUIRED)]
    )
    member_number_pattern = StringField(
        "编号格式 · Member number pattern",
        default="####",
        validators=[
            DataRequired(REQUIRED),
            Regexp(
                NUMBER_PATTERN.pattern,
                message="一段 # 表示数字位数，例如 #### 或 LS-## · "
                "One run of #, e.g. #### or LS-##",
            ),
        ],
    )

    staff_number_pattern = StringField(
        "工作人员编号格式 · Staff number pattern",
        default="LS-##",
        validators=[
            DataRequired(REQUIRED),
            Regexp(NUMBER_PATTERN.pattern, message="一段 # 表示数字位数 · One run of #"),
        ],
    )
    pay_link_days = IntegerField(
        "审核通过后付款链接有效天数 · Days an approved applicant's pay link works",
        default=7,
        validators=[InputRequired(REQUIRED), NumberRange(min=1, max=90)],
    )
    reminder_days = IntegerField(
        "到期前几天提醒 · Remind members this many days before their term ends",
        default=7,
        validators=[InputRequired(REQUIRED), NumberRange(min=1, max=60)],
    )

    def validate_time_zone(self, field: StringField) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(field.data)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValidationError("未知时区 · Unknown time zone") from error


def url_code_field() -> StringField:
    """The code that names a tier or a course in its URLs: a-z, 0-9 and -."""
    return StringField(
        "代号 · Code",
        filters=[strip_text],
        validators=[
            DataRequired(REQUIRED),
            Regexp(r"^[a-z0-9][a-z0-9-]{0,39}$", message="小写字母、数字或- · a-z, 0-9 or -"),
        ],
    )


class TierForm(FlaskForm):
    code = url_code_field()
    name = StringField(
        "名称 · Name", filters=[strip_text], validators=[DataRequired(REQUIRED), Length(max=60)]
    )
    includes = TextAreaField(
        "包含内容（每行一条）· Includes, one per line", validators=[Length(max=4000)]
    )
    kind = SelectField(
        "类型 · Kind",
        choices=[
            SelectChoice(TierKind.PAID.value, "付费 · Paid"),
            SelectChoice(TierKind.FREE.value, "免费 · Free"),
        ],
    )
    price = StringField("价格（元）· Price", filters=[strip_text], default="0")
    renewal_price = StringField(
        "续费价（元，空=同价格）· Renewal price (empty = the price)", filters=[strip_text]
    )
    duration_days = IntegerField(
        "有效天数（空=永久）· Days (empty = lifetime)",
        validators=[Optional(), NumberRange(min=1, max=36500)],
    )
    audience = SelectField(
        "面向 · For",
        choices=[
            SelectChoice(TierAudience.EVERYONE.value, "所有人 · Everyone"),
            SelectChoice(TierAudience.RETURNING.value, "回归老成员 · Returning members"),
            SelectChoice(TierAudience.MEMBERS.value, "现有成员（新一季）· Current members"),
        ],
    )
    active = BooleanField("开放报名 · Open", default=True)
    sort_order = IntegerField("排序 · Order", default=0, validators=[Optional()])
    requires_screening = BooleanField("需回答问题并审核 · Applicants are screened")
    is_lobby = BooleanField("大厅（审核期间先进此群）· The lobby screened applicants wait in")
    groups = SelectMultipleField("邀请进入的群 · Groups", coerce=int)
    # Renewal by band (``membership.renewal``): percentages of the renewal price. Left out
    # or left empty, each keeps its default (today's behaviour: 100 %, no grace days).
    #: The renewal fields, saved on the tier as they are.
    renewal_fields = (
        "renewal_early_percent",
        "renewal_grace_days",
        "renewal_grace_percent",
        "renewal_late_percent",
        "renewal_window_days",
    )
    renewal_early_percent = IntegerField(
        _l("Renewal price before the end (percent)"),
        default=100,
        filters=[lambda value: 100 if value is None else value],
        validators=[Optional(), NumberRange(min=1, max=500)],
    )
    renewal_grace_days = IntegerField(
        _l("Grace days after the end (0: none)"),
        default=0,
        filters=[lambda value: 0 if value is None else value],
        validators=[Optional(), NumberRange(min=0, max=365)],
    )
    renewal_grace_percent = IntegerField(
        _l("Renewal price within the grace days (percent)"),
        default=100,
        filters=[lambda value: 100 if value is None else value],
        validators=[Optional(), NumberRange(min=1, max=500)],
    )
    renewal_late_percent = IntegerField(
        _l("Renewal price later (percent)"),
        default=100,
        filters=[lambda value: 100 if value is None else value],
        validators=[Optional(), NumberRange(min=1, max=500)],
    )
    renewal_window_days = IntegerField(
        _l("The renew button appears this many days before the end"),
        default=30,
        filters=[lambda value: 30 if value is None else value],
        validators=[Optional(), NumberRange(min=1, max=3650)],
    )

    def price_in(self, currency: str) -> Money:
        """The price typed, in ``currency``; raises ValueError if it is not an amount."""
        return Money.parse_major(self.price.data or "", currency)


class ImageUploadField(FileField):
    """An uploaded image: only a file sent with the form is its data. A plain value under
    its name is a form error, and the stored image of the object being edited (bytes) is
    not taken for an upload."""

    def process_data(self, value: object) -> None:
        self.data = None

    def process_formdata(self, valuelist: list) -> None:
        if any(value and not isinstance(value, FileStorage) for value in valuelist):
            raise ValueError("请上传图片文件 · Send the image as a file")
        super().process_formdata(valuelist)


class GroupForm(FlaskForm):
    name = StringField(
        "群名称 · Name", filters=[strip_text], validators=[DataRequired(REQUIRED), Length(max=60)]
    )
    platform = SelectField(
        "平台 · Platform", choices=[SelectChoice(p.key, p.label) for p in PLATFORMS.values()]
    )
    capacity = IntegerField(
        "容量 · Capacity", validators=[InputRequired(REQUIRED), NumberRange(min=0, max=200_000)]
    )
    join_link = StringField(
        "入群链接 · Join link",
        filters=[strip_text],
        validators=[Optional(), URL(message="链接格式不正确 · Not a link"), Length(max=500)],
    )
    telegram_chat_id = StringField(
        "Telegram 群 chat id（机器人需为管理员）· Telegram chat id (the bot must be an admin)",
        filters=[strip_text],
        validators=[Optional(), Regexp(r"^-?[0-9]{5,20}$|^@[A-Za-z0-9_]{5,32}$")],
    )
    wecom_chat_id = StringField(
        "企业微信客户群 chat id · WeCom customer group's chat id",
        filters=[strip_text],
        validators=[Optional(), Regexp(r"^[A-Za-z0-9_-]{1,64}$")],
        render_kw={"list": "wecom-chats"},
    )
    qr_expires_at = DateField("二维码到期日 · QR code expires on", validators=[Optional()])
    qr_image = ImageUploadField(
        "群二维码图片 · QR image",
        validators=[
            FileAllowed(["png", "jpg", "jpeg", "webp"], "仅限图片 · Images only"),
            FileSize(max_size=2 * 1024 * 1024, message="最大2MB · At most 2 MB"),
        ],
    )

    def validate_capacity(self, field: IntegerField) -> None:
        limit = PLATFORMS[self.platform.data].max_members if self.platform.data in PLATFORMS else 0
        if field.data is not None and field.data > limit:
            raise ValidationError(f"该平台一个群最多 {limit} 人 · At most {limit} on this platform")


class MemberLoginForm(FlaskForm):
    """A member asks for a one-time code at their phone number or e-mail address."""

    contact_kind = RadioField(
        _l("Get the code by"),
        choices=CONTACT_CHOICES,
        default=ContactKind.PHONE.value,
        validators=[InputRequired(REQUIRED)],
    )
    contact_value = StringField(
        _l("The phone or e-mail you joined with"),
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=254, message=TOO_LONG)],
    )

    validate_contact_value = JoinForm.validate_contact_value


class ChannelForm(FlaskForm):
    """A member adds a channel we can reach them on: a code goes to it (``/me``)."""

    channel_optional = False
    contact_kind = MemberLoginForm.contact_kind
    contact_value = StringField(
        _l("Phone or e-mail"),
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=254, message=TOO_LONG)],
    )

    validate_contact_value = JoinForm.validate_contact_value


class LoginCodeForm(FlaskForm):
    code = StringField(
        _l("Code"),
        filters=[strip_text],
        validators=[
            DataRequired(REQUIRED),
            Regexp(r"^[0-9]{6}$", message=_l("Six digits")),
        ],
        # Phones open the number pad and offer the code that just came by SMS.
        render_kw={
            "inputmode": "numeric",
            "autocomplete": "one-time-code",
            "pattern": "[0-9]*",
            "maxlength": "6",
        },
    )


class ActivityForm(FlaskForm):
    """Members seen taking part: numbers or nicknames, typed or in a CSV's first column."""

    identifiers = TextAreaField(
        "成员编号或昵称，每行一个 · Member numbers or nicknames, one per line",
        validators=[Length(max=200_000)],
    )
    csv_file = FileField(
        "或上传CSV（第一列）· Or a CSV file (first column)",
        validators=[FileAllowed(["csv", "txt"], "仅限CSV · CSV only")],
    )


class PurgeForm(FlaskForm):
    inactive_since = DateField(
        "清退此日期之后未活跃的成员 · Purge members not active since",
        validators=[InputRequired(REQUIRED)],
    )


def with_questions(form_class: type[FlaskForm], questions: list[ScreeningQuestion]):
    """``form_class`` with one field per screening question, named ``q_<id>``."""
    fields = {}
    for question in questions:
        needed = [DataRequired(REQUIRED)] if question.required else [Optional()]
        choices = [SelectChoice(choice, choice) for choice in question.choice_list]
        if question.kind is QuestionKind.TEXT:
            field = TextAreaField(question.prompt, validators=[*needed, Length(max=2000)])
        elif question.kind is QuestionKind.SINGLE:
            single_needed = [InputRequired(REQUIRED)] if question.required else [Optional()]
            field = RadioField(question.prompt, choices=choices, validators=single_needed)
        else:
            field = SelectMultipleField(
                question.prompt,
                choices=choices,
                validators=needed,
                widget=ListWidget(prefix_label=False),
                option_widget=CheckboxInput(),
            )
        fields[f"q_{question.id}"] = field
    return type(f"{form_class.__name__}WithQuestions", (form_class,), fields)


def answers_of(form: FlaskForm, questions: list[ScreeningQuestion]) -> dict[str, object]:
    return {str(q.id): form[f"q_{q.id}"].data for q in questions}


class QuestionForm(FlaskForm):
    prompt = StringField(
        "问题 · Question",
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=300)],
    )
    kind = SelectField(
        "类型 · Kind",
        choices=[
            SelectChoice(QuestionKind.TEXT.value, "文字 · Text"),
            SelectChoice(QuestionKind.SINGLE.value, "单选 · One choice"),
            SelectChoice(QuestionKind.MULTIPLE.value, "多选 · Several choices"),
        ],
    )
    choices = TextAreaField("选项，每行一个 · Choices, one per line", validators=[Length(max=4000)])
    required = BooleanField("必答 · Required", default=True)
    auto_approve_answer = StringField(
        "自动通过的答案（选填，须为选项之一）· Auto-approve on this answer (optional, one "
        "of the choices)",
        filters=[strip_text],
        validators=[Optional(), Length(max=300)],
    )

    def validate_auto_approve_answer(self, field: StringField) -> None:
        choices = [line.strip() for line in (self.choices.data or "").splitlines()]
        if field.data and (self.kind.data == QuestionKind.TEXT or field.data not in choices):
            raise ValidationError("须为选择题的一个选项 · Must be one of the choices")

    def validate_choices(self, field: TextAreaField) -> None:
        lines = [line for line in (field.data or "").splitlines() if line.strip()]
        if self.kind.data != QuestionKind.TEXT and len(lines) < 2:
            raise ValidationError("选择题至少两个选项 · A choice question needs two choices")


class ReviewForm(FlaskForm):
    """Approve or reject one or more applications."""

    reason = StringField("拒绝原因（拒绝时必填）· Reason, to reject", validators=[Length(max=300)])


class SeasonForm(FlaskForm):
    """Invite the members of one tier to this tier's groups: a new season."""

    from_tier = SelectField("邀请哪个档位的现有成员 · Members of", coerce=int)
    mode = RadioField(
        "方式 · How",
        choices=[
            SelectChoice("free", "免费直接邀请 · Invite them free"),
            SelectChoice("fee", "通知他们付本档位的季费加入 · Ask them to pay this tier's fee"),
        ],
        default="free",
        validators=[InputRequired(REQUIRED)],
    )


class ExportForm(FlaskForm):
    first_day = DateField("从 · From", validators=[InputRequired(REQUIRED)])
    last_day = DateField("到（含）· To (inclusive)", validators=[InputRequired(REQUIRED)])
    format = RadioField(
        "格式 · Format",
        choices=[SelectChoice("csv", "CSV"), SelectChoice("xlsx", "Excel (XLSX)")],
        default="csv",
    )

    def validate_last_day(self, field: DateField) -> None:
        if self.first_day.data and field.data and field.data < self.first_day.data:
            raise ValidationError("结束日期早于开始日期 · The range ends before it starts")


class AccessForm(FlaskForm):
    """Grant a tier to a member by hand, or end one of their memberships."""

    action = RadioField(
        "操作 · Action",
        choices=[
            SelectChoice("grant", "开通档位 · Grant a tier"),
            SelectChoice("end", "取消资格 · End a membership"),
            SelectChoice("staff", "给工作人员编号 · Give a staff number"),
        ],
        validators=[InputRequired(REQUIRED)],
    )
    tier = SelectField("档位 · Tier", coerce=int, validate_choice=False)
    membership = SelectField("会员资格 · Membership", coerce=int, validate_choice=False)
    reason = StringField(
        "原因（记入日志）· Reason (kept in the log)",
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=200)],
    )


class ImportForm(FlaskForm):
    csv_file = FileField(
        "成员CSV · Members CSV",
        validators=[
            FileRequired("请选择文件 · Choose a file"),
            FileAllowed(["csv", "txt"], "仅限CSV · CSV only"),
        ],
    )
    dry_run = SubmitField("试运行 · Dry run")
    run = SubmitField("导入 · Import")
