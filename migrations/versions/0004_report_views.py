"""reporting views

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

The SQL of each view is frozen here (a later change is a new migration that replaces the view).
Days are China-time calendar days; money is fen (integer) with a yuan twin (numeric, 2 places).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PAY_TYPES = [
    (0, "付款码支付", "payment code"),
    (1, "盒马在线码-普通支付(pos)", "Hema online code (POS)"),
    (2, "盒马在线码-免密协议支付(pos)", "Hema online code, password-free (POS)"),
    (3, "银联刷卡(旧pos)", "UnionPay card (old POS)"),
    (4, "现金(pos)", "cash (POS)"),
    (5, "支付宝离线码(pos)", "Alipay offline code (POS)"),
    (6, "支付宝快捷支付(app)", "Alipay quick pay (app)"),
    (7, "支付平台", "payment platform"),
    (8, "国际支付宝", "Alipay international"),
    (9, "支付宝当面付", "Alipay face-to-face"),
    (10, "网商银行信任付", "MYbank trust pay"),
    (11, "支付宝", "Alipay"),
    (12, "支付宝", "Alipay"),
    (13, "网商银行融易收", "MYbank Rongyishou"),
    (14, "现金", "cash"),
    (15, "银行卡", "bank card"),
    (16, "支票", "cheque"),
    (17, "三江购物券", "Sanjiang shopping voucher"),
    (18, "三江赊销", "Sanjiang credit sale"),
]
PAY_TYPE_VALUES = ", ".join(f"({code}, '{zh}', '{en}')" for code, zh, en in PAY_TYPES)

DAY = "(o.pay_time AT TIME ZONE 'Asia/Shanghai')::date"


def yuan(expr: str, name: str) -> str:
    return f"round(({expr}) / 100.0, 2) AS {name}"


VIEWS = {
    "report_daily_sales": f"""
        WITH subs AS (
            SELECT order_biz_order_id,
                   sum(promotion_discount_amt) AS promotion,
                   sum(member_discount_amt) AS member,
                   sum(share_discount_amt) AS share
            FROM wdk_sub_orders GROUP BY order_biz_order_id
        ), d AS (
            SELECT o.store_id, {DAY} AS day, o.trd_type, o.original_amt, o.post_fee, o.pay_amt,
                   coalesce(s.promotion, 0) AS promotion, coalesce(s.member, 0) AS member,
                   coalesce(s.share, 0) AS share
            FROM wdk_orders o LEFT JOIN subs s ON s.order_biz_order_id = o.biz_order_id
        )
        SELECT store_id, day,
               count(*) AS orders,
               count(*) FILTER (WHERE trd_type = 1) AS sales,
               count(*) FILTER (WHERE trd_type = 2) AS refunds,
               coalesce(sum(original_amt) FILTER (WHERE trd_type = 1), 0)::bigint AS original_fen,
               coalesce(sum(promotion) FILTER (WHERE trd_type = 1), 0)::bigint AS promotion_discount_fen,
               coalesce(sum(member) FILTER (WHERE trd_type = 1), 0)::bigint AS member_discount_fen,
               coalesce(sum(share) FILTER (WHERE trd_type = 1), 0)::bigint AS share_discount_fen,
               coalesce(sum(post_fee) FILTER (WHERE trd_type = 1), 0)::bigint AS post_fee_fen,
               coalesce(sum(pay_amt) FILTER (WHERE trd_type = 1), 0)::bigint AS paid_fen,
               coalesce(sum(pay_amt) FILTER (WHERE trd_type = 2), 0)::bigint AS refunded_fen,
               coalesce(sum(pay_amt) FILTER (WHERE trd_type = 1), 0)
                 - coalesce(sum(pay_amt) FILTER (WHERE trd_type = 2), 0)::bigint AS net_fen,
               {
        yuan("coalesce(sum(original_amt) FILTER (WHERE trd_type = 1), 0)", "original_yuan")
    },
               {
        yuan(
            "coalesce(sum(promotion + member + share) FILTER (WHERE trd_type = 1), 0)",
            "discount_yuan",
        )
    },
               {yuan("coalesce(sum(post_fee) FILTER (WHERE trd_type = 1), 0)", "post_fee_yuan")},
               {yuan("coalesce(sum(pay_amt) FILTER (WHERE trd_type = 1), 0)", "paid_yuan")},
               {yuan("coalesce(sum(pay_amt) FILTER (WHERE trd_type = 2), 0)", "refunded_yuan")},
               {
        yuan(
            "coalesce(sum(pay_amt) FILTER (WHERE trd_type = 1), 0)"
            " - coalesce(sum(pay_amt) FILTER (WHERE trd_type = 2), 0)",
            "net_yuan",
        )
    }
        FROM d GROUP BY store_id, day
    """,
    "report_pay_channel_mix": f"""
        SELECT coalesce(o.store_id, p.store_id) AS store_id, {DAY} AS day, p.pay_type,
               coalesce(t.name_zh, 'unknown') AS pay_type_name,
               coalesce(t.name_en, 'unknown') AS pay_type_name_en,
               count(*) FILTER (WHERE p.trd_type IS DISTINCT FROM 2) AS payments,
               count(*) FILTER (WHERE p.trd_type = 2) AS refunds,
               coalesce(sum(p.pay_amount) FILTER (WHERE p.trd_type IS DISTINCT FROM 2), 0)::bigint
                 AS amount_fen,
               coalesce(sum(p.pay_amount) FILTER (WHERE p.trd_type = 2), 0)::bigint AS refund_fen,
               {
        yuan(
            "coalesce(sum(p.pay_amount) FILTER (WHERE p.trd_type IS DISTINCT FROM 2), 0)",
            "amount_yuan",
        )
    },
               {yuan("coalesce(sum(p.pay_amount) FILTER (WHERE p.trd_type = 2), 0)", "refund_yuan")}
        FROM wdk_pay_channels p
        JOIN wdk_orders o ON o.biz_order_id = p.biz_order_id
        LEFT JOIN (VALUES {PAY_TYPE_VALUES}) AS t(pay_type, name_zh, name_en)
          ON t.pay_type = p.pay_type
        GROUP BY 1, 2, 3, 4, 5
    """,
    "report_item_sales": f"""
        SELECT s.item_code, s.sku_code, {DAY} AS day,
               count(*) FILTER (WHERE s.trd_type IS DISTINCT FROM 2) AS lines,
               coalesce(sum(s.quantity) FILTER (WHERE s.trd_type IS DISTINCT FROM 2
                 AND s.ns_quantity IS NULL), 0) AS units,
               coalesce(sum(s.ns_quantity) FILTER (WHERE s.trd_type IS DISTINCT FROM 2), 0)
                 AS weighed_quantity,
               max(nullif(s.sell_unit, '')) AS weighed_unit,
               coalesce(sum(s.original_amt) FILTER (WHERE s.trd_type IS DISTINCT FROM 2), 0)::bigint
                 AS original_fen,
               coalesce(sum(coalesce(s.promotion_discount_amt, 0) + coalesce(s.member_discount_amt, 0)
                 + coalesce(s.share_discount_amt, 0)) FILTER (WHERE s.trd_type IS DISTINCT FROM 2), 0)::bigint
                 AS discount_fen,
               coalesce(sum(s.original_amt - coalesce(s.promotion_discount_amt, 0)
                 - coalesce(s.member_discount_amt, 0) - coalesce(s.share_discount_amt, 0))
                 FILTER (WHERE s.trd_type IS DISTINCT FROM 2), 0)::bigint AS amount_fen,
               coalesce(sum(s.original_amt) FILTER (WHERE s.trd_type = 2), 0)::bigint AS refunded_fen,
               {
        yuan(
            "coalesce(sum(s.original_amt - coalesce(s.promotion_discount_amt, 0)"
            " - coalesce(s.member_discount_amt, 0) - coalesce(s.share_discount_amt, 0))"
            " FILTER (WHERE s.trd_type IS DISTINCT FROM 2), 0)",
            "amount_yuan",
        )
    },
               {
        yuan("coalesce(sum(s.original_amt) FILTER (WHERE s.trd_type = 2), 0)", "refunded_yuan")
    }
        FROM wdk_sub_orders s
        JOIN wdk_orders o ON o.biz_order_id = s.order_biz_order_id
        GROUP BY 1, 2, 3
    """,
    "report_omni_guides": """
        SELECT o2o_guide_id, max(o2o_guide_name) AS o2o_guide_name,
               o2o_shop_id, max(o2o_shop_name) AS o2o_shop_name,
               count(*) AS orders,
               coalesce(sum(total_fee), 0)::bigint AS total_fee,
               coalesce(sum(voucher_price), 0)::bigint AS voucher_price,
               coalesce(sum(promotion_amount), 0)::bigint AS promotion_amount,
               count(*) FILTER (WHERE promotion_id IS NOT NULL) AS orders_with_promotion,
               max(synced_at) AS last_synced_at
        FROM omni_orders GROUP BY o2o_guide_id, o2o_shop_id
    """,
    "report_sync_freshness": """
        WITH backlog AS (
            SELECT api,
                   count(*) FILTER (WHERE state IN ('pending', 'failed', 'leased')) AS backlog,
                   count(*) FILTER (WHERE state = 'dead') AS dead,
                   min(next_attempt_at) FILTER (WHERE state IN ('pending', 'failed'))
                     AS oldest_pending
            FROM sync_queue GROUP BY api
        ), stores AS (
            SELECT 'wdk' AS api, store_id, count(*) AS orders, max(synced_at) AS last_synced_at,
                   max(changed_at) AS last_changed_at, max(pay_time) AS last_pay_time
            FROM wdk_orders GROUP BY store_id
            UNION ALL
            SELECT 'omni', o2o_shop_id, count(*), max(synced_at), max(changed_at), NULL
            FROM omni_orders GROUP BY o2o_shop_id
        )
        SELECT s.api, s.store_id, s.orders, s.last_synced_at, s.last_changed_at, s.last_pay_time,
               date_trunc('second', now() - s.last_synced_at) AS lag,
               coalesce(b.backlog, 0) AS queue_backlog, coalesce(b.dead, 0) AS queue_dead,
               b.oldest_pending AS queue_oldest_pending
        FROM stores s LEFT JOIN backlog b ON b.api = s.api
    """,
    "report_data_quality": """
        WITH ch AS (
            SELECT biz_order_id, sum(pay_amount) AS total, count(*) AS n
            FROM wdk_pay_channels GROUP BY biz_order_id
        ), so AS (
            SELECT order_biz_order_id, sum(original_amt) AS total
            FROM wdk_sub_orders GROUP BY order_biz_order_id
        ), blobs AS (
            SELECT 'wdk_orders' AS tbl, 'trade_attributes' AS col, biz_order_id AS order_id,
                   trade_attributes IS NULL AND trim(coalesce(trade_attributes_raw, '')) NOT IN ('', 'null') AS bad
            FROM wdk_orders
            UNION ALL
            SELECT 'wdk_pay_channels', 'pay_attributes', biz_order_id,
                   pay_attributes IS NULL AND trim(coalesce(pay_attributes_raw, '')) NOT IN ('', 'null')
            FROM wdk_pay_channels
            UNION ALL
            SELECT 'wdk_pay_channels', 'koubei_coupon_info', biz_order_id,
                   koubei_coupon_info IS NULL AND trim(coalesce(koubei_coupon_info_raw, '')) NOT IN ('', 'null')
            FROM wdk_pay_channels
            UNION ALL
            SELECT 'wdk_sub_orders', 'promotion_info', order_biz_order_id,
                   promotion_info IS NULL AND trim(coalesce(promotion_info_raw, '')) NOT IN ('', 'null')
            FROM wdk_sub_orders
            UNION ALL
            SELECT 'wdk_sub_orders', 'status_change_time', order_biz_order_id,
                   status_change_time IS NULL AND trim(coalesce(status_change_time_raw, '')) NOT IN ('', 'null')
            FROM wdk_sub_orders
            UNION ALL
            SELECT 'wdk_sub_orders', 'trade_sub_attributes', order_biz_order_id,
                   trade_sub_attributes IS NULL AND trim(coalesce(trade_sub_attributes_raw, '')) NOT IN ('', 'null')
            FROM wdk_sub_orders
        )
        SELECT 'pay_channels_total' AS check_name, 'wdk' AS api, o.store_id,
               o.biz_order_id::text AS order_key,
               format('pay channels total %s fen, pay_amt %s fen', ch.total, o.pay_amt) AS detail,
               o.synced_at
        FROM wdk_orders o JOIN ch ON ch.biz_order_id = o.biz_order_id
        WHERE ch.total IS DISTINCT FROM o.pay_amt
        UNION ALL
        SELECT 'sub_orders_total', 'wdk', o.store_id, o.biz_order_id::text,
               format('sub-orders original total %s fen, order original_amt %s fen', so.total,
                      o.original_amt),
               o.synced_at
        FROM wdk_orders o JOIN so ON so.order_biz_order_id = o.biz_order_id
        WHERE so.total IS DISTINCT FROM o.original_amt
        UNION ALL
        SELECT 'unparseable_json', 'wdk', o.store_id, o.biz_order_id::text,
               format('%s.%s could not be parsed (raw text kept in %s_raw)', b.tbl, b.col, b.col),
               o.synced_at
        FROM blobs b JOIN wdk_orders o ON o.biz_order_id = b.order_id
        WHERE b.bad
        UNION ALL
        SELECT 'unknown_fields', 'wdk', store_id, biz_order_id::text,
               'fields the schema does not know: ' || array_to_string(unknown_fields, ', '),
               synced_at
        FROM wdk_orders WHERE unknown_fields IS NOT NULL
        UNION ALL
        SELECT 'unknown_fields', 'omni', o2o_shop_id, order_id,
               'fields the schema does not know: ' || array_to_string(unknown_fields, ', '),
               synced_at
        FROM omni_orders WHERE unknown_fields IS NOT NULL
    """,
}


def upgrade() -> None:
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
