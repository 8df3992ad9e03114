"""The forms members and admins fill in for perks, coupons, courses and offers."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateTimeLocalField,
    HiddenField,
    IntegerField,
    RadioField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.validators import (
    URL,
    DataRequired,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    Regexp,
    ValidationError,
)

from membership.forms import REQUIRED, coupon_code_field, strip_text, url_code_field
from perks.models import PerkKind

CODE = Regexp(
    r"^[A-Za-z0-9][-_A-Za-z0-9]{0,39}$", message="字母、数字、-或_ · Letters, digits, - or _"
)
MONEY_HINT = "价格格式不正确，例如 9 或 9.90 · Enter an amount like 9.90"


class CourseBuyForm(FlaskForm):
    coupon = coupon_code_field()
    provider = RadioField(_l("Pay with"), validators=[InputRequired(REQUIRED)])
    submission_key = HiddenField(validators=[DataRequired(), Regexp(r"^[A-Za-z0-9_-]{16,64}$")])


class EligibilityForm(FlaskForm):
    """The conditions of an :class:`~perks.models.EligibilityRule`; blank ones do not count."""

    tier_id = SelectField("须持有档位 · Holds tier", coerce=int, default=0)
    min_tenure_days = IntegerField(
        "入群至少天数 · Member for at least (days)",
        validators=[Optional(), NumberRange(min=1, max=36500)],
    )
    max_member_number = IntegerField(
        "成员编号不大于（元老）· Member number at most (founders)",
        validators=[Optional(), NumberRange(min=1)],
    )
    min_seasons_paid = IntegerField(
        "至少付费次数 · Paid at least (times)",
        validators=[Optional(), NumberRange(min=1, max=1000)],
    )
    staff_only = BooleanField("仅限工作人员 · Staff only")
    active = BooleanField("上架 · Active", default=True)

    def rule_values(self) -> dict[str, object]:
        return {
            "tier_id": self.tier_id.data or None,
            "min_tenure_days": self.min_tenure_days.data,
            "max_member_number": self.max_member_number.data,
            "min_seasons_paid": self.min_seasons_paid.data,
            "staff_only": self.staff_only.data,
            "active": self.active.data,
        }


class PerkForm(EligibilityForm):
    name = StringField(
        "名称 · Name", filters=[strip_text], validators=[DataRequired(REQUIRED), Length(max=60)]
    )
    description = TextAreaField("说明 · Description", validators=[Length(max=2000)])
    kind = SelectField(
        "类型 · Kind",
        choices=[
            SelectChoice(PerkKind.LINK.value, "下载或链接 · A download or link"),
            SelectChoice(PerkKind.ITEM.value, "限量物品 · A limited item"),
            SelectChoice(PerkKind.COUPON.value, "优惠券 · A coupon"),
            SelectChoice(PerkKind.COURSE.value, "免费课程 · A free course"),
        ],
    )
    link_url = StringField(
        "链接或领取方式 · Link, or how to claim",
        filters=[strip_text],
        validators=[Optional(), URL(message="请填写完整网址 · Enter a full URL"), Length(max=500)],
    )
    coupon_id = SelectField("优惠券 · Coupon", coerce=int, default=0)
    course_id = SelectField("课程 · Course", coerce=int, default=0)
    stock = IntegerField(
        "库存（空=不限）· Stock (empty = no limit)", validators=[Optional(), NumberRange(min=0)]
    )
    per_member_limit = IntegerField(
        "每人可领次数 · Per member",
        default=1,
        validators=[InputRequired(REQUIRED), NumberRange(min=1, max=100)],
    )

    def validate_link_url(self, field: StringField) -> None:
        if self.kind.data == PerkKind.LINK and not field.data:
            raise ValidationError("链接类福利须填写链接 · A link perk needs its link")

    def validate_coupon_id(self, field: SelectField) -> None:
        if self.kind.data == PerkKind.COUPON and not field.data:
            raise ValidationError("请选择优惠券 · Choose the coupon")

    def validate_course_id(self, field: SelectField) -> None:
        if self.kind.data == PerkKind.COURSE and not field.data:
            raise ValidationError("请选择课程 · Choose the course")


class CouponForm(EligibilityForm):
    code = StringField(
        "优惠码 · Code", filters=[strip_text], validators=[DataRequired(REQUIRED), CODE]
    )
    description = StringField(
        "说明 · Description", filters=[strip_text], validators=[Length(max=200)]
    )
    kind = RadioField(
        "优惠方式 · Discount",
        choices=[
            SelectChoice("percent", "按比例 · Percent off"),
            SelectChoice("amount", "减金额 · Amount off"),
        ],
        default="percent",
        validators=[InputRequired(REQUIRED)],
    )
    percent_off = IntegerField(
        "折扣百分比（20 = 减20%）· Percent off",
        validators=[Optional(), NumberRange(min=1, max=100)],
    )
    amount_off = StringField("减免金额（元）· Amount off", filters=[strip_text])
    min_amount = StringField("最低订单金额（元）· Minimum order", filters=[strip_text], default="0")
    tiers = SelectMultipleField("适用档位（都不选=全部）· Tiers (none = all)", coerce=int)
    courses = SelectMultipleField("适用课程 · Courses", coerce=int)
    valid_from = DateTimeLocalField("生效时间 · Valid from", validators=[Optional()])
    valid_until = DateTimeLocalField("截止时间 · Valid until", validators=[Optional()])
    max_uses = IntegerField(
        "总次数（空=不限）· Uses in all (empty = no limit)",
        validators=[Optional(), NumberRange(min=1)],
    )
    max_uses_per_buyer = IntegerField(
        "每人次数 · Uses per person",
        default=1,
        validators=[InputRequired(REQUIRED), NumberRange(min=1, max=100)],
    )
    issued_only = BooleanField("仅限获赠成员使用 · Only members it is issued to")

    def validate_percent_off(self, field: IntegerField) -> None:
        if self.kind.data == "percent" and not field.data:
            raise ValidationError(REQUIRED)

    def validate_amount_off(self, field: StringField) -> None:
        if self.kind.data == "amount" and not field.data:
            raise ValidationError(REQUIRED)

    def validate_valid_until(self, field: DateTimeLocalField) -> None:
        if self.valid_from.data and field.data and field.data <= self.valid_from.data:
            raise ValidationError("截止时间须晚于生效时间 · Must be after the start")


class CampaignForm(CouponForm):
    """Generate many single codes with the same terms."""

    code = None
    prefix = StringField(
        "前缀 · Prefix",
        filters=[strip_text],
        validators=[
            Optional(),
            Regexp(r"^[A-Z0-9-]{0,12}$", message="大写字母、数字或- · A-Z, 0-9 or -"),
        ],
    )
    campaign = StringField(
        "活动名 · Campaign",
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=60)],
    )
    count = IntegerField(
        "生成数量 · How many", validators=[InputRequired(REQUIRED), NumberRange(min=1, max=10000)]
    )


class CourseForm(EligibilityForm):
    code = url_code_field()
    title = StringField(
        "课程名 · Title", filters=[strip_text], validators=[DataRequired(REQUIRED), Length(max=80)]
    )
    description = TextAreaField("介绍 · Description", validators=[Length(max=4000)])
    price = StringField(
        "价格（元）· Price", filters=[strip_text], validators=[DataRequired(REQUIRED)]
    )
    access_url = StringField(
        "学习链接（购买后可见）· Content link (shown once bought)",
        filters=[strip_text],
        validators=[
            DataRequired(REQUIRED),
            URL(message="请填写完整网址 · Enter a full URL"),
            Length(max=500),
        ],
    )


class OfferForm(EligibilityForm):
    name = StringField(
        "名称（如：老成员七折）· Name (e.g. veterans 30% off)",
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=60)],
    )
    course_id = SelectField("课程 · Course", coerce=int)
    percent_off = IntegerField(
        "优惠百分比 · Percent off", validators=[InputRequired(REQUIRED), NumberRange(min=1, max=99)]
    )
    valid_until = DateTimeLocalField("截止时间 · Valid until", validators=[Optional()])
