//! The syntax tree of a trigger expression: functions, windows, item
//! references, operators and the error type every stage reports with.

/// The functions an expression may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Func {
    /// The newest value.
    Last,
    /// The smallest value in the window.
    Min,
    /// The largest value in the window.
    Max,
    /// The mean of the values in the window.
    Avg,
    /// The sum of the values in the window.
    Sum,
    /// How many values the window holds.
    Count,
    /// The newest value minus the one before it.
    Change,
    /// 1 when the item had no sample in the window, else 0.
    Nodata,
}

impl Func {
    /// Every function, in the order error messages list them.
    pub const ALL: [Func; 8] = [
        Func::Last,
        Func::Min,
        Func::Max,
        Func::Avg,
        Func::Sum,
        Func::Count,
        Func::Change,
        Func::Nodata,
    ];

    /// The name written in expressions.
    pub fn name(self) -> &'static str {
        match self {
            Func::Last => "last",
            Func::Min => "min",
            Func::Max => "max",
            Func::Avg => "avg",
            Func::Sum => "sum",
            Func::Count => "count",
            Func::Change => "change",
            Func::Nodata => "nodata",
        }
    }

    /// Looks a function up by its name (case-sensitive, as in Zabbix).
    pub fn parse(name: &str) -> Option<Func> {
        Func::ALL.into_iter().find(|f| f.name() == name)
    }

    /// True when the function takes a window argument.
    pub fn takes_window(self) -> bool {
        !matches!(self, Func::Last | Func::Change)
    }
}

/// The window of a function: a time span or a number of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// Samples with `clock > now - seconds`.
    Time(i64),
    /// The newest N samples (`#N`).
    Count(u32),
}

/// An item named in an expression: `/host/key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItemRef {
    /// The host id.
    pub host: String,
    /// The item key on that host.
    pub key: String,
    /// Character offset of the leading `/` in the expression.
    pub pos: usize,
}

impl ItemRef {
    /// Character offset of the host's first character.
    pub fn host_pos(&self) -> usize {
        self.pos + 1
    }

    /// Character offset of the key's first character.
    pub fn key_pos(&self) -> usize {
        self.pos + 2 + self.host.chars().count()
    }
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    /// How tightly the operator binds: higher binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne => 3,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 4,
            BinOp::Add | BinOp::Sub => 5,
            BinOp::Mul | BinOp::Div => 6,
        }
    }

    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "=",
            BinOp::Ne => "<>",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A constant (suffixes already applied; `-5` is folded into the constant).
    Num(f64),
    /// A function over an item.
    Func {
        func: Func,
        item: ItemRef,
        window: Option<Window>,
        /// Character offset of the function name.
        pos: usize,
    },
    /// Unary minus.
    Neg(Box<Expr>),
    /// Logical `not`.
    Not(Box<Expr>),
    /// A binary operation.
    Bin {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}

impl Expr {
    /// Every function call, left to right.
    pub fn functions(&self) -> Vec<(Func, &ItemRef, Option<Window>)> {
        let mut out = Vec::new();
        self.visit_functions(&mut |func, item, window| out.push((func, item, window)));
        out
    }

    fn visit_functions<'a>(&'a self, f: &mut impl FnMut(Func, &'a ItemRef, Option<Window>)) {
        match self {
            Expr::Num(_) => {}
            Expr::Func {
                func, item, window, ..
            } => f(*func, item, *window),
            Expr::Neg(e) | Expr::Not(e) => e.visit_functions(f),
            Expr::Bin { lhs, rhs, .. } => {
                lhs.visit_functions(f);
                rhs.visit_functions(f);
            }
        }
    }

    /// The first item the expression names, if any.
    pub fn first_item(&self) -> Option<&ItemRef> {
        self.functions().into_iter().next().map(|(_, item, _)| item)
    }
}

/// A syntax or semantic error in an expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("character {offset}: {message}")]
pub struct ExprError {
    /// 0-based character offset into the expression.
    pub offset: usize,
    /// What is wrong, for the technician.
    pub message: String,
}

impl ExprError {
    pub(super) fn new(offset: usize, message: impl Into<String>) -> ExprError {
        ExprError {
            offset,
            message: message.into(),
        }
    }
}
