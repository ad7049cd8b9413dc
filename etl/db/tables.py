"""The schema: the one MetaData, Alembic's target and the only source of table definitions.

Columns keep the API's field names. Money is integer fen (分) in ``bigint``; ids are ``bigint``
where the API types them Number and ``text`` where it types them String; times are
``timestamptz`` (the API's China-time strings read as Asia/Shanghai); decimal strings are
``numeric``; JSON-in-string fields are ``jsonb`` (NULL when unparseable) next to a ``*_raw``
``text`` column holding the text exactly as received. Each column's comment says what it means,
with the API page's Chinese term, and is stored in the database too (``\\d+ table`` in psql).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = sa.MetaData(naming_convention=NAMING)

TZ = sa.DateTime(timezone=True)


def c(name: str, type_: Any, comment: str, *args: Any, **kw: Any) -> sa.Column[Any]:
    """A nullable column with its data-dictionary comment."""
    kw.setdefault("nullable", not kw.get("primary_key", False))
    kw.setdefault("autoincrement", False)  # API ids are given, not generated
    return sa.Column(name, type_, *args, comment=comment, **kw)


def fen(name: str, comment: str) -> sa.Column[Any]:
    return c(name, sa.BigInteger, f"{comment} (fen, 1/100 yuan)")


def json_pair(name: str, comment: str) -> list[sa.Column[Any]]:
    """A JSON-in-string field: parsed ``jsonb`` (NULL if unparseable) + the text as received."""
    return [
        c(name, JSONB, f"{comment}; parsed from the JSON text (NULL when unparseable)"),
        c(f"{name}_raw", sa.Text, f"{comment}; the text exactly as received"),
    ]


def bookkeeping() -> list[sa.Column[Any]]:
    """Columns every parent (order) table carries (its raw JSON lives in order_archive)."""
    now = sa.text("now()")
    return [
        c(
            "payload_hash",
            sa.Text,
            "sha256 of the canonical payload; its raw JSON is the order_archive row with this hash",
            nullable=False,
        ),
        c("unknown_fields", sa.ARRAY(sa.Text), "fields the schema does not know yet (in raw)"),
        c(
            "first_synced_at",
            TZ,
            "when etl first stored the order",
            nullable=False,
            server_default=now,
        ),
        c(
            "synced_at",
            TZ,
            "when etl last wrote the order (new or changed content); an unchanged re-fetch "
            "is recorded on its sync_queue row (done_at), not here",
            nullable=False,
            server_default=now,
        ),
        c(
            "changed_at",
            TZ,
            "when the stored content last changed",
            nullable=False,
            server_default=now,
        ),
        c("fetched_at", TZ, "when the payload now stored was fetched", nullable=False),
    ]


def fk(column: str, target: str, comment: str, type_: Any) -> sa.Column[Any]:
    return c(column, type_, comment, sa.ForeignKey(target, ondelete="CASCADE"), nullable=False)


# ---------------------------------------------------------------------------- alibaba.wdk.order.get

wdk_orders = sa.Table(
    "wdk_orders",
    metadata,
    c(
        "biz_order_id",
        sa.BigInteger,
        "order id in the middle platform (业务订单号)",
        primary_key=True,
    ),
    c("tb_biz_order_id", sa.BigInteger, "Taobao main order id (淘宝主订单号)"),
    c("out_order_id", sa.Text, "channel / external order id (外部订单号)"),
    c("store_id", sa.Text, "store code (门店编码)"),
    c("shop_id", sa.Text, "channel shop id (渠道店id)"),
    c("out_shop_id", sa.Text, "external store id (外部门店id)"),
    c("merchant_code", sa.Text, "merchant code (merchantCode)"),
    c("order_from", sa.Integer, "channel source (渠道来源)"),
    c("order_client", sa.Text, "app or pos (app或pos)"),
    c("trd_type", sa.SmallInteger, "1 = sale, 2 = reverse / refund (销售类型)"),
    c("order_status", sa.Text, "order status, e.g. PAID (orderStatus)"),
    c("pay_time", TZ, "time of payment, read as China time (成交时间)"),
    c("package_time", TZ, "time packed, read as China time (打包时间)"),
    fen("original_amt", "goods total before discounts (商品总金额(优惠前))"),
    fen("discount_amt", "goods discount total (商品优惠总额)"),
    fen("member_discount_amt", "member price discount total (会员价优惠总金额)"),
    fen("post_fee", "delivery fee (配送费)"),
    fen("pay_amt", "amount paid (支付金额)"),
    c("member_card_num", sa.Text, "member card number (会员卡号)"),
    c("member_point", sa.Numeric, "member points (memberPoint), decimal"),
    c("operator_id", sa.Text, "cashier id (收银员编号)"),
    c("operator_name", sa.Text, "cashier name (收银员名字)"),
    c("gift_coupon", sa.Text, "gift coupon as couponId_amountInFen (赠券)"),
    c("duty_code", sa.Text, "a unique string (一串唯一的字符串)"),
    c("open_uid", sa.Text, "buyer open_uid (买家open_uid)"),
    *json_pair("trade_attributes", "order attributes map (trade_attributes)"),
    *bookkeeping(),
    sa.Index(None, "store_id", "pay_time"),
    sa.Index(None, "order_status"),
    sa.Index(None, "pay_time"),
    sa.Index(None, "tb_biz_order_id"),
    sa.Index(None, "out_order_id"),
    comment="orders from alibaba.wdk.order.get, one row per biz_order_id",
)

wdk_pay_channels = sa.Table(
    "wdk_pay_channels",
    metadata,
    fk(
        "biz_order_id",
        "wdk_orders.biz_order_id",
        "the order paid (所属淘宝主订单号)",
        sa.BigInteger,
    ),
    c("seq", sa.SmallInteger, "position in the order's pay_channels list, from 0", nullable=False),
    c("order_channel", sa.Text, "sales channel / order source, e.g. APP|淘宝 (销售渠道)"),
    fen("pay_amount", "amount paid through this channel (当前渠道付款金额)"),
    c(
        "pay_type",
        sa.SmallInteger,
        "payment type code (当前渠道付款类型); see report_pay_channel_mix",
    ),
    c("pos_no", sa.Text, "POS machine number (交易订单POS机器号)"),
    c("store_id", sa.Text, "store code (门店编码)"),
    c("trd_type", sa.SmallInteger, "1 = sale, 2 = reverse / refund (销售类型)"),
    fen("actual_pay_amount", "amount actually paid after rounding (实付抹分金额)"),
    fen("adjust_amount", "adjustment (adjustAmount)"),
    c("promotion_card_info", sa.Text, "promotion card info (promotionCardInfo)"),
    *json_pair("pay_attributes", "payment attributes map by pay_type (扩展属性)"),
    fen("pmt_alipay_promotion_amt", "Alipay promotion (支付宝优惠金额)"),
    fen("pmt_alipay_reduce_amt", "Alipay random reduction (支付宝随机立减金额)"),
    fen("pmt_koubei_coupon_amt", "Koubei coupon discount (口碑券的优惠金额)"),
    *json_pair("koubei_coupon_info", "Koubei coupons, a JSON array (口碑优惠信息)"),
    sa.PrimaryKeyConstraint("biz_order_id", "seq"),
    comment="payments of wdk_orders, one row per entry of the order's pay_channels",
)

wdk_sub_orders = sa.Table(
    "wdk_sub_orders",
    metadata,
    c("biz_order_id", sa.BigInteger, "sub-order id (业务子订单id)", primary_key=True),
    fk("order_biz_order_id", "wdk_orders.biz_order_id", "the order it came in", sa.BigInteger),
    c("seq", sa.SmallInteger, "position in the order's sub_orders list, from 0", nullable=False),
    c("parent_id", sa.BigInteger, "parent order id as sent (父订单id)"),
    c("tb_biz_order_id", sa.BigInteger, "Taobao sub-order id (淘宝子订单号)"),
    c("out_order_id", sa.Text, "external order id (外部订单号)"),
    c("store_id", sa.Text, "store code (门店编码)"),
    c("trd_type", sa.SmallInteger, "1 = sale, 2 = reverse / refund (销售类型)"),
    c("order_type", sa.Text, "COMMON or GIFT (子订单类型)"),
    c("order_status", sa.Text, "sub-order status (子订单的状态)"),
    c("item_code", sa.BigInteger, "item id (商品id)"),
    c("sku_code", sa.Text, "item sku code (商品skuCode)"),
    c("out_sku_code", sa.Text, "external sku code (外部skucode)"),
    fen("price", "item list price (商品原价)"),
    c("quantity", sa.Numeric, "quantity bought (购买数量)"),
    c("sell_unit", sa.Text, "unit of weighed goods, e.g. kg (非标品销售单位)"),
    c("ns_quantity", sa.Numeric, "quantity of weighed goods (非标品购买数量), decimal"),
    c("stock_unit", sa.Text, "stock unit (库存单位)"),
    c("sale_unit", sa.Text, "sales unit (销售单位)"),
    c("pick_amount_stock", sa.Numeric, "quantity picked in stock units (库存单位拣货数量)"),
    c("buy_amount_stock", sa.Numeric, "quantity bought in stock units (库存单位购买数量)"),
    fen("original_amt", "sale: quantity x list price; refund: amount refunded (售价金额/退款金额)"),
    fen("promotion_discount_amt", "promotion discount total (促销优惠总金额)"),
    fen("member_discount_amt", "member price discount (会员价优惠金额)"),
    fen("share_discount_amt", "other shared discounts (其它分摊优惠金额)"),
    fen(
        "txd_pmt_amt", "platform-funded part of Taoxianda coupons (淘鲜达平台优惠券中平台出资金额)"
    ),
    fen("pick_amt", "amount picked (拣货金额)"),
    c("member_point", sa.Numeric, "member points (memberPoint), decimal"),
    *json_pair("promotion_info", "promotions applied, a JSON array (促销信息)"),
    *json_pair("status_change_time", "status -> time map (statusChangeTime)"),
    *json_pair("trade_sub_attributes", "sub-order attributes map (tradeSubAttributes)"),
    sa.Index(None, "order_biz_order_id"),
    sa.Index(None, "item_code"),
    comment="line items of wdk_orders, one row per sub-order",
)

# ------------------------------------------------------------------------ alibaba.omni.order.query

omni_orders = sa.Table(
    "omni_orders",
    metadata,
    c("order_id", sa.Text, "order id (订单号)", primary_key=True),
    c("user_id", sa.Text, "guide id the order was queried with (导购员id)"),
    c("alipay_order_id", sa.Text, "Alipay order id (支付宝订单号)"),
    c("out_order_id", sa.Text, "external order id (外部订单号)"),
    c("o2o_guide_id", sa.BigInteger, "shopping guide id (导购员Id)"),
    c("o2o_guide_name", sa.Text, "shopping guide nickname (导购员昵称)"),
    c("o2o_shop_id", sa.Text, "shop id (门店Id)"),
    c("o2o_shop_name", sa.Text, "shop name (门店名称)"),
    c("item_id", sa.BigInteger, "item id (商品Id)"),
    c("item_title", sa.Text, "item title (商品标题)"),
    c("sku_id", sa.Text, "sku id (skuId)"),
    c("sku_properties_name", sa.Text, "sku details (sku详情)"),
    c("contract_price", sa.BigInteger, "contract amount (合同金额), unit as received"),
    c("total_fee", sa.BigInteger, "total price (总价), unit as received"),
    c("voucher_price", sa.BigInteger, "discount amount (优惠金额), unit as received"),
    c("pay_status", sa.Integer, "payment status (支付状态)"),
    c("can_close", sa.Boolean, "whether the order can be closed (canClose)"),
    c("promotion_id", sa.BigInteger, "promotion_info.promotion_id (promotionId)"),
    c("promotion_amount", sa.BigInteger, "promotion_info.promotion_amount, unit as received"),
    c("promotion_type", sa.Integer, "0 = store coupon, 1 = paid coupon (门店优惠券/有价优惠券)"),
    c("promotion_order_id", sa.BigInteger, "promotion_info.promotion_order_id"),
    c("promotion_buy_amount", sa.BigInteger, "promotion_info.promotion_buy_amount"),
    *bookkeeping(),
    sa.Index(None, "o2o_shop_id"),
    sa.Index(None, "o2o_guide_id"),
    sa.Index(None, "pay_status"),
    comment="guide-sold orders from alibaba.omni.order.query, one row per order_id",
)

omni_subpay_orders = sa.Table(
    "omni_subpay_orders",
    metadata,
    c("subpay_order_id", sa.BigInteger, "sub-payment order id (子支付订单号)", primary_key=True),
    fk("order_id", "omni_orders.order_id", "the order it belongs to", sa.Text),
    c("seq", sa.SmallInteger, "position in subpay_order_list, from 0", nullable=False),
    c("step_no", sa.Integer, "stage number (阶段号)"),
    c("pay_status", sa.Integer, "sub-order payment status (子订单支付状态)"),
    c("pay_type", sa.Integer, "payment type (支付类型)"),
    c("total_fee", sa.BigInteger, "stage total (该阶段总金额), unit as received"),
    c("disburse_status", sa.Text, "whether funds arrived (资金是否到账)"),
    sa.Index(None, "order_id"),
    comment="staged payments of omni_orders (subpay_order_list)",
)

omni_pay_serials = sa.Table(
    "omni_pay_serials",
    metadata,
    fk("order_id", "omni_orders.order_id", "the order it belongs to", sa.Text),
    c("seq", sa.SmallInteger, "position in pay_order_serial_infos, from 0", nullable=False),
    c("pay_serial_no", sa.Text, "card payment serial (刷卡流水)"),
    c("step_no", sa.Integer, "stage number (阶段号)"),
    c("batch_no", sa.BigInteger, "card batch (刷卡批次)"),
    c("paid_money", sa.BigInteger, "amount paid (支付金额), unit as received"),
    c("pay_time", TZ, "time paid, read as China time (支付时间)"),
    c("sync_time", TZ, "time synced by the acquirer, China time (通联同步时间)"),
    c("pay_type", sa.Integer, "1 = card, 2 = Alipay (支付类型)"),
    c("pay_status", sa.Integer, "0 = pending, 1 = success (支付状态)"),
    sa.PrimaryKeyConstraint("order_id", "seq"),
    comment="payment serials of omni_orders (pay_order_serial_infos)",
)

# --------------------------------------------------------------------------------------- operations

QUEUE_STATES = ("pending", "leased", "done", "not_found", "failed", "dead")

sync_queue = sa.Table(
    "sync_queue",
    metadata,
    c("id", sa.BigInteger, "row id", primary_key=True, autoincrement=True),
    c("api", sa.Text, "wdk or omni", nullable=False),
    c("id_kind", sa.Text, "wdk: biz, tb_biz or out_order; omni: omni", nullable=False),
    c("key", sa.Text, "the id; omni: user_id,order_id,out_order_id", nullable=False),
    c(
        "state",
        sa.Text,
        "pending, leased, done, not_found, failed or dead",
        nullable=False,
        server_default="pending",
    ),
    c("attempts", sa.Integer, "failed fetches so far", nullable=False, server_default="0"),
    c(
        "not_found_checks",
        sa.Integer,
        "times the platform said not found",
        nullable=False,
        server_default="0",
    ),
    c(
        "next_attempt_at",
        TZ,
        "claimable from this time (pending, failed, not_found awaiting a re-check); NULL = never",
        server_default=sa.text("now()"),
    ),
    c("leased_until", TZ, "lease expiry while state = leased"),
    c("leased_by", sa.Text, "worker holding the lease (host:pid)"),
    c("last_error_class", sa.Text, "class of the last error (etl.errors)"),
    c("last_error", sa.Text, "message of the last error"),
    c("run_id", sa.BigInteger, "sync_runs.id of the run that last touched the row"),
    c(
        "priority",
        sa.SmallInteger,
        "claimed in this order, lower first: 0 live (messages, refreshes, by hand), 10 bulk",
        nullable=False,
        server_default="0",
    ),
    c("enqueued_at", TZ, "first enqueued", nullable=False, server_default=sa.text("now()")),
    c("updated_at", TZ, "last state change", nullable=False, server_default=sa.text("now()")),
    c("done_at", TZ, "when it reached done / not_found / dead"),
    sa.UniqueConstraint("api", "id_kind", "key"),
    sa.CheckConstraint(
        "state IN ('pending', 'leased', 'done', 'not_found', 'failed', 'dead')", name="state"
    ),
    sa.CheckConstraint("api IN ('wdk', 'omni')", name="api"),
    sa.Index(None, "state", "next_attempt_at"),
    # Serves claim's ORDER BY priority, next_attempt_at over the due rows.
    sa.Index(
        "ix_sync_queue_due_priority",
        "api",
        "priority",
        "next_attempt_at",
        "id",
        postgresql_where=sa.text("state IN ('pending', 'failed', 'not_found')"),
    ),
    # Serves the prune of finished rows (etl prune) without reading the unfinished ones.
    sa.Index(
        "ix_sync_queue_finished_done_at",
        "done_at",
        postgresql_where=sa.text("state IN ('done', 'not_found', 'dead')"),
    ),
    comment="ids to fetch: one row per (api, id kind, key)",
)

sync_runs = sa.Table(
    "sync_runs",
    metadata,
    c("id", sa.BigInteger, "run id", primary_key=True, autoincrement=True),
    c("kind", sa.Text, "worker, sync, backfill, replay, demo, tmc or load", nullable=False),
    c(
        "status",
        sa.Text,
        "running, ok, failed, interrupted or killed (its process vanished)",
        nullable=False,
        server_default="running",
    ),
    c("started_at", TZ, "start", nullable=False, server_default=sa.text("now()")),
    c("ended_at", TZ, "end (NULL while running)"),
    c("heartbeat_at", TZ, "last sign of life of the process (every batch and every ~15 s)"),
    c("host", sa.Text, "host:pid of the process"),
    c("ids_claimed", sa.Integer, "queue rows claimed", nullable=False, server_default="0"),
    c("api_calls", sa.Integer, "platform calls made", nullable=False, server_default="0"),
    c("retries", sa.Integer, "calls retried", nullable=False, server_default="0"),
    c("bans", sa.Integer, "flow-control bans met", nullable=False, server_default="0"),
    c(
        "orders_inserted",
        sa.Integer,
        "orders new to the tables",
        nullable=False,
        server_default="0",
    ),
    c(
        "orders_updated",
        sa.Integer,
        "orders whose content changed",
        nullable=False,
        server_default="0",
    ),
    c(
        "orders_unchanged",
        sa.Integer,
        "orders received unchanged",
        nullable=False,
        server_default="0",
    ),
    c(
        "orders_stale",
        sa.Integer,
        "payloads older than the stored one",
        nullable=False,
        server_default="0",
    ),
    c("not_found", sa.Integer, "ids the platform did not know", nullable=False, server_default="0"),
    c("failed", sa.Integer, "ids that failed in this run", nullable=False, server_default="0"),
    c("error", sa.Text, "why the run failed, if it did"),
    c("details", JSONB, "other counters (bad fields, unknown fields, ...)"),
    sa.Index(None, "started_at"),
    comment="one row per run of etl worker / sync / backfill / replay / demo",
)

order_archive = sa.Table(
    "order_archive",
    metadata,
    c("id", sa.BigInteger, "row id", primary_key=True, autoincrement=True),
    c("api", sa.Text, "wdk or omni", nullable=False),
    c("order_key", sa.Text, "biz_order_id (wdk) or order_id (omni), as text", nullable=False),
    # The partition key, so part of the primary key (PostgreSQL requires it in every unique key).
    c(
        "fetched_at",
        TZ,
        "when this version was fetched (the monthly partition it lives in)",
        primary_key=True,
    ),
    c("payload_hash", sa.Text, "sha256 of the canonical payload", nullable=False),
    c(
        "raw",
        sa.Text,
        "the order as received (simplified shape), JSON text; read it with raw::jsonb",
        nullable=False,
    ),
    c("archived_at", TZ, "when it was archived", nullable=False, server_default=sa.text("now()")),
    sa.Index(None, "api", "order_key", "fetched_at"),
    comment="every version of every order, as received: the one place raw JSON is stored "
    "(partitioned by month of fetched_at)",
    postgresql_partition_by="RANGE (fetched_at)",
)

top_bans = sa.Table(
    "top_bans",
    metadata,
    c("app_key", sa.Text, "the app key the platform banned", primary_key=True),
    c("until", TZ, "when the ban ends", nullable=False),
    c(
        "sub_code",
        sa.Text,
        "the platform's sub_code, e.g. accesscontrol.limited-by-app-access-count",
    ),
    c("message", sa.Text, "the platform's message"),
    c(
        "updated_at",
        TZ,
        "when a worker last met it",
        nullable=False,
        server_default=sa.text("now()"),
    ),
    comment="flow-control bans longer than top_ban_threshold, shared by every worker",
)


top_credential_holds = sa.Table(
    "top_credential_holds",
    metadata,
    c("app_key", sa.Text, "the app key whose credentials the platform rejected", primary_key=True),
    c("error_class", sa.Text, "AuthError, SignatureError, AppKeyError or PermissionDenied"),
    c("setting", sa.Text, "what the operator must fix, e.g. ETL_TOP_SESSION"),
    c("message", sa.Text, "the platform's answer"),
    c("since", TZ, "first rejection", nullable=False, server_default=sa.text("now()")),
    c("next_try_at", TZ, "when a worker next tries one call", nullable=False),
    c("tries", sa.Integer, "probe calls rejected so far", nullable=False, server_default="0"),
    c(
        "updated_at",
        TZ,
        "last rejection",
        nullable=False,
        server_default=sa.text("now()"),
    ),
    comment="credentials the platform rejected: workers stop calling and retry one call at a time",
)


backfills = sa.Table(
    "backfills",
    metadata,
    c("id", sa.BigInteger, "backfill id", primary_key=True, autoincrement=True),
    c("api", sa.Text, "wdk or omni", nullable=False),
    c("id_kind", sa.Text, "the id kind of its ids", nullable=False),
    c("fingerprint", sa.Text, "sha256 of its ids in order: the same file given again resumes it"),
    c("source", sa.Text, "the file it was read from (- for stdin)"),
    c("ids", sa.Integer, "how many ids it holds", nullable=False),
    c("created_at", TZ, "first run", nullable=False, server_default=sa.text("now()")),
    c("last_run_at", TZ, "latest run", nullable=False, server_default=sa.text("now()")),
    sa.UniqueConstraint("api", "id_kind", "fingerprint"),
    comment="one row per `etl backfill` id file: the ids a backfill claims, resumes and counts",
)

backfill_ids = sa.Table(
    "backfill_ids",
    metadata,
    c(
        "backfill_id",
        sa.BigInteger,
        "backfills.id",
        primary_key=True,
    ),
    c(
        "queue_id",
        sa.BigInteger,
        "sync_queue.id of one of its ids",
        primary_key=True,
    ),
    # No foreign keys (migration 0010): they cost ~11 us an id of a backfill's writes; the
    # rows are written with the queue rows they point at, and etl prune deletes them with theirs.
    sa.Index(None, "queue_id"),
    comment="the queue rows of each backfill (a queue row may belong to several)",
)


# ------------------------------------------------------------ the platform's message service (TMC)

tmc_hints = sa.Table(
    "tmc_hints",
    metadata,
    c("api", sa.Text, "wdk (the api the message's order is fetched with)", primary_key=True),
    c("id_kind", sa.Text, "biz (the id kind of key)", primary_key=True),
    c("key", sa.Text, "the order id the messages named (biz_order_id)", primary_key=True),
    c("first_pub_time", TZ, "pub_time of the oldest message not yet loaded", nullable=False),
    c("last_pub_time", TZ, "pub_time of the newest message not yet loaded", nullable=False),
    c("messages", sa.Integer, "messages merged into this hint", nullable=False, server_default="1"),
    c(
        "received_at",
        TZ,
        "when the newest of these messages was pulled",
        nullable=False,
        server_default=sa.text("now()"),
    ),
    comment="orders TMC messages say changed, until a payload fetched after the newest message "
    "is stored (then the message-to-row latency goes to tmc_latency)",
)

tmc_latency = sa.Table(
    "tmc_latency",
    metadata,
    c("id", sa.BigInteger, "row id", primary_key=True, autoincrement=True),
    c("api", sa.Text, "wdk", nullable=False),
    c("key", sa.Text, "the order id (biz_order_id)", nullable=False),
    c("pub_time", TZ, "pub_time of the oldest message the load answered", nullable=False),
    c("loaded_at", TZ, "when the order's row was written", nullable=False),
    c("seconds", sa.Float, "loaded_at - pub_time, seconds (pub_time has 1 s resolution)"),
    sa.Index(None, "loaded_at"),
    comment="freshness: from a TMC message's pub_time to the order's row committed",
)

tmc_topics = sa.Table(
    "tmc_topics",
    metadata,
    c("topic", sa.Text, "the TMC topic, e.g. alibaba_wdkorder_StatusChange", primary_key=True),
    c("handled", sa.Boolean, "whether etl queues the orders it names", nullable=False),
    c("messages", sa.BigInteger, "messages pulled (and confirmed)", nullable=False),
    c("first_seen_at", TZ, "first pulled", nullable=False, server_default=sa.text("now()")),
    c("last_seen_at", TZ, "last pulled", nullable=False, server_default=sa.text("now()")),
    comment="messages pulled per TMC topic; topics etl does not handle are confirmed and counted",
)

tmc_unreadable = sa.Table(
    "tmc_unreadable",
    metadata,
    c("id", sa.BigInteger, "row id", primary_key=True, autoincrement=True),
    c("message_id", sa.BigInteger, "the message id (NULL when it could not be read either)"),
    c("topic", sa.Text, "the message's topic, as received"),
    c("content", sa.Text, "the message's content, as received"),
    c("reason", sa.Text, "why it cannot be read", nullable=False),
    c("received_at", TZ, "when it was pulled", nullable=False, server_default=sa.text("now()")),
    sa.UniqueConstraint("message_id"),
    comment="TMC messages whose content cannot be read: kept for inspection, and confirmed",
)


# What a reporting role may read (`etl grant-reader`, the reader_role setting), besides every
# view: the orders and their audit trail. Everything else (the queue, runs, bans, Alembic's
# bookkeeping) stays internal; a new table is internal until it is listed here.
READABLE = (
    wdk_orders,
    wdk_pay_channels,
    wdk_sub_orders,
    omni_orders,
    omni_subpay_orders,
    omni_pay_serials,
    order_archive,
)


top_quota_leases = sa.Table(
    "top_quota_leases",
    metadata,
    c("app_key", sa.Text, "the app key whose quota (top_qps) is shared", primary_key=True),
    c("holder", sa.Text, "the process holding a share: host:pid#token", primary_key=True),
    c("role", sa.Text, "worker, sync, backfill, ... (what the process is)", nullable=False),
    c("quota", sa.Float, "the app key's top_qps as this process reads it", nullable=False),
    c("units", sa.Integer, "calls per second granted to it", nullable=False, server_default="0"),
    c(
        "releasing",
        sa.Integer,
        "calls per second it gave back, still counted until release_until",
        nullable=False,
        server_default="0",
    ),
    c("release_until", TZ, "when the units given back are free for others"),
    c("demand", sa.Integer, "calls per second it could use", nullable=False, server_default="0"),
    c("rate", sa.Float, "calls per second it made lately", nullable=False, server_default="0"),
    c("started_at", TZ, "when it took the lease", nullable=False, server_default=sa.text("now()")),
    c("renewed_at", TZ, "last renewal", nullable=False, server_default=sa.text("now()")),
    c("expires_at", TZ, "the lease lapses then unless renewed", nullable=False),
    comment="shares of each app key's quota held by live processes (short leases, renewed ~1/s)",
)

top_quota_days = sa.Table(
    "top_quota_days",
    metadata,
    c("app_key", sa.Text, "the app key", primary_key=True),
    c("day", sa.Date, "China-time (Asia/Shanghai) day", primary_key=True),
    c("calls", sa.BigInteger, "platform calls made that day", nullable=False, server_default="0"),
    c("updated_at", TZ, "last count", nullable=False, server_default=sa.text("now()")),
    comment="platform calls per app key and China-time day (for top_daily_budget)",
)
