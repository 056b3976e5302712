//! Lexer and parser for the filter/rule expression language (see docs/API.md, "Filters").
//!
//! The parser is total: any input yields an AST or a `QueryError`, never a panic; input
//! length, nesting depth and list sizes are bounded.

use crate::QueryError;

pub const MAX_EXPRESSION_LENGTH: usize = 4096;
pub const MAX_DEPTH: usize = 32;
pub const MAX_LIST: usize = 500;

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    User,
    Now,
    Today,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A field, `role`, or (next to `role`) a role name.
    Name(String, usize),
    Lit(Literal),
    /// `@now`, `@today` (with an offset in seconds) or `@user`.
    Var(Var, i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
    /// The operator with its sides swapped (`a < b` is `b > a`).
    pub fn flip(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextOp {
    Contains,
    StartsWith,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Const(bool),
    Cmp(Operand, CmpOp, Operand),
    In(Operand, Vec<Literal>, bool),
    IsNull(Operand, bool),
    Text(Operand, TextOp, Operand),
    /// A bare operand: a bool field.
    Truthy(Operand),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Str(String),
    Int(i64),
    Float(f64),
    Duration(i64),
    Var(Var),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Op(CmpOp),
    And,
    Or,
    Not,
    Plus,
    Minus,
}

fn syntax(position: usize, message: impl Into<String>) -> QueryError {
    QueryError::syntax(position, message)
}

fn lex(input: &str) -> Result<Vec<(Token, usize)>, QueryError> {
    if input.len() > MAX_EXPRESSION_LENGTH {
        return Err(syntax(
            0,
            format!("the expression is longer than {MAX_EXPRESSION_LENGTH} bytes"),
        ));
    }
    let chars: Vec<(usize, char)> = input.char_indices().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        let next = chars.get(i + 1).map(|(_, c)| *c);
        match c {
            c if c.is_whitespace() => {
                i += 1;
            }
            '(' | ')' | '[' | ']' | ',' | '+' => {
                tokens.push((
                    match c {
                        '(' => Token::LParen,
                        ')' => Token::RParen,
                        '[' => Token::LBracket,
                        ']' => Token::RBracket,
                        ',' => Token::Comma,
                        _ => Token::Plus,
                    },
                    pos,
                ));
                i += 1;
            }
            '-' => {
                tokens.push((Token::Minus, pos));
                i += 1;
            }
            '&' if next == Some('&') => {
                tokens.push((Token::And, pos));
                i += 2;
            }
            '|' if next == Some('|') => {
                tokens.push((Token::Or, pos));
                i += 2;
            }
            '=' => {
                tokens.push((Token::Op(CmpOp::Eq), pos));
                i += if next == Some('=') { 2 } else { 1 };
            }
            '!' if next == Some('=') => {
                tokens.push((Token::Op(CmpOp::Ne), pos));
                i += 2;
            }
            '!' => {
                tokens.push((Token::Not, pos));
                i += 1;
            }
            '<' | '>' => {
                let op = match (c, next) {
                    ('<', Some('=')) => CmpOp::Le,
                    ('>', Some('=')) => CmpOp::Ge,
                    ('<', Some('>')) => CmpOp::Ne,
                    ('<', _) => CmpOp::Lt,
                    _ => CmpOp::Gt,
                };
                let width = if matches!(next, Some('=')) || (c == '<' && next == Some('>')) {
                    2
                } else {
                    1
                };
                tokens.push((Token::Op(op), pos));
                i += width;
            }
            '"' | '\'' => {
                let quote = c;
                let mut value = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(syntax(pos, "unterminated string")),
                        Some((_, '\\')) => match chars.get(j + 1) {
                            Some((_, escaped @ ('\\' | '"' | '\''))) => {
                                value.push(*escaped);
                                j += 2;
                            }
                            Some((_, 'n')) => {
                                value.push('\n');
                                j += 2;
                            }
                            _ => return Err(syntax(chars[j].0, "unknown escape in string")),
                        },
                        Some((_, ch)) if *ch == quote => break,
                        Some((_, ch)) => {
                            value.push(*ch);
                            j += 1;
                        }
                    }
                }
                tokens.push((Token::Str(value), pos));
                i = j + 1;
            }
            '@' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].1.is_ascii_alphanumeric() || chars[j].1 == '_') {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().map(|(_, c)| *c).collect();
                let var = match name.as_str() {
                    "user" => Var::User,
                    "now" => Var::Now,
                    "today" => Var::Today,
                    _ => {
                        return Err(syntax(
                            pos,
                            format!("unknown variable '@{name}'; expected @user, @now or @today"),
                        ));
                    }
                };
                tokens.push((Token::Var(var), pos));
                i = j;
            }
            c if c.is_ascii_digit() => {
                let mut j = i;
                while j < chars.len() && (chars[j].1.is_ascii_digit() || chars[j].1 == '.') {
                    j += 1;
                }
                let text: String = chars[i..j].iter().map(|(_, c)| *c).collect();
                let unit = chars.get(j).map(|(_, c)| *c);
                let unit_alone = unit.is_some_and(|u| matches!(u, 's' | 'm' | 'h' | 'd'))
                    && !chars
                        .get(j + 1)
                        .is_some_and(|(_, c)| c.is_ascii_alphanumeric() || *c == '_');
                if unit_alone {
                    let amount: i64 = text
                        .parse()
                        .map_err(|_| syntax(pos, "a duration is a whole number and a unit"))?;
                    let scale = match unit {
                        Some('s') => 1,
                        Some('m') => 60,
                        Some('h') => 3600,
                        _ => 86400,
                    };
                    let seconds = amount
                        .checked_mul(scale)
                        .filter(|s| s.abs() <= 3_650 * 86_400 * 10)
                        .ok_or_else(|| syntax(pos, "duration out of range"))?;
                    tokens.push((Token::Duration(seconds), pos));
                    i = j + 1;
                } else if text.contains('.') {
                    let value: f64 = text
                        .parse()
                        .ok()
                        .filter(|f: &f64| f.is_finite())
                        .ok_or_else(|| syntax(pos, format!("'{text}' is not a number")))?;
                    tokens.push((Token::Float(value), pos));
                    i = j;
                } else {
                    let value: i64 = text
                        .parse()
                        .map_err(|_| syntax(pos, format!("'{text}' is out of range")))?;
                    tokens.push((Token::Int(value), pos));
                    i = j;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = i;
                while j < chars.len() && (chars[j].1.is_ascii_alphanumeric() || chars[j].1 == '_') {
                    j += 1;
                }
                let word: String = chars[i..j].iter().map(|(_, c)| *c).collect();
                let token = match word.as_str() {
                    "and" | "AND" => Token::And,
                    "or" | "OR" => Token::Or,
                    "not" | "NOT" => Token::Not,
                    _ => Token::Name(word),
                };
                tokens.push((token, pos));
                i = j;
            }
            other => return Err(syntax(pos, format!("unexpected character '{other}'"))),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }
    fn position(&self) -> usize {
        self.tokens.get(self.at).map(|(_, p)| *p).unwrap_or(self.end)
    }
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).map(|(t, _)| t.clone());
        self.at += 1;
        token
    }
    fn expect(&mut self, token: Token, what: &str) -> Result<(), QueryError> {
        let position = self.position();
        match self.next() {
            Some(t) if t == token => Ok(()),
            _ => Err(syntax(position, format!("expected {what}"))),
        }
    }
    fn is_name(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Name(n)) if n == word)
    }

    fn or(&mut self, depth: usize) -> Result<Expr, QueryError> {
        let mut terms = vec![self.and(depth)?];
        while self.peek() == Some(&Token::Or) {
            self.next();
            terms.push(self.and(depth)?);
        }
        Ok(balanced(terms, Expr::Or))
    }

    fn and(&mut self, depth: usize) -> Result<Expr, QueryError> {
        let mut terms = vec![self.unary(depth)?];
        while self.peek() == Some(&Token::And) {
            self.next();
            terms.push(self.unary(depth)?);
        }
        Ok(balanced(terms, Expr::And))
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, QueryError> {
        if depth > MAX_DEPTH {
            return Err(syntax(
                self.position(),
                format!("the expression nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        match self.peek() {
            Some(Token::Not) => {
                self.next();
                Ok(Expr::Not(Box::new(self.unary(depth + 1)?)))
            }
            Some(Token::LParen) => {
                self.next();
                let inner = self.or(depth + 1)?;
                self.expect(Token::RParen, "')'")?;
                Ok(inner)
            }
            _ => self.predicate(),
        }
    }

    fn predicate(&mut self) -> Result<Expr, QueryError> {
        let left = self.operand()?;
        let position = self.position();
        match self.peek().cloned() {
            Some(Token::Op(op)) => {
                self.next();
                let right = self.operand()?;
                Ok(match (&left, op, &right) {
                    (_, CmpOp::Eq, Operand::Lit(Literal::Null)) => Expr::IsNull(left, false),
                    (_, CmpOp::Ne, Operand::Lit(Literal::Null)) => Expr::IsNull(left, true),
                    (Operand::Lit(Literal::Null), CmpOp::Eq, _) => Expr::IsNull(right, false),
                    (Operand::Lit(Literal::Null), CmpOp::Ne, _) => Expr::IsNull(right, true),
                    _ => Expr::Cmp(left, op, right),
                })
            }
            Some(Token::Not) => {
                self.next();
                if !self.is_name("in") {
                    return Err(syntax(position, "expected 'in' after 'not'"));
                }
                self.next();
                Ok(Expr::In(left, self.list()?, true))
            }
            Some(Token::Name(word)) => match word.as_str() {
                "in" => {
                    self.next();
                    Ok(Expr::In(left, self.list()?, false))
                }
                "is" => {
                    self.next();
                    let negated = self.peek() == Some(&Token::Not);
                    if negated {
                        self.next();
                    }
                    if !self.is_name("null") {
                        return Err(syntax(self.position(), "expected 'null' after 'is'"));
                    }
                    self.next();
                    Ok(Expr::IsNull(left, negated))
                }
                "contains" | "startswith" => {
                    self.next();
                    let op = if word == "contains" {
                        TextOp::Contains
                    } else {
                        TextOp::StartsWith
                    };
                    Ok(Expr::Text(left, op, self.operand()?))
                }
                _ => Err(syntax(position, format!("unexpected '{word}'; expected an operator"))),
            },
            _ => match left {
                Operand::Lit(Literal::Bool(b)) => Ok(Expr::Const(b)),
                other => Ok(Expr::Truthy(other)),
            },
        }
    }

    fn list(&mut self) -> Result<Vec<Literal>, QueryError> {
        self.expect(Token::LBracket, "'[' to start a list")?;
        let mut items = vec![];
        if self.peek() == Some(&Token::RBracket) {
            self.next();
            return Ok(items);
        }
        loop {
            let position = self.position();
            match self.operand()? {
                Operand::Lit(literal) => items.push(literal),
                _ => return Err(syntax(position, "a list holds only literal values")),
            }
            if items.len() > MAX_LIST {
                return Err(syntax(position, format!("a list holds at most {MAX_LIST} values")));
            }
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::RBracket) => return Ok(items),
                _ => return Err(syntax(position, "expected ',' or ']' in a list")),
            }
        }
    }

    fn operand(&mut self) -> Result<Operand, QueryError> {
        let position = self.position();
        match self.next() {
            Some(Token::Name(name)) => Ok(match name.as_str() {
                "true" => Operand::Lit(Literal::Bool(true)),
                "false" => Operand::Lit(Literal::Bool(false)),
                "null" => Operand::Lit(Literal::Null),
                _ => Operand::Name(name, position),
            }),
            Some(Token::Str(s)) => Ok(Operand::Lit(Literal::Str(s))),
            Some(Token::Int(i)) => Ok(Operand::Lit(Literal::Int(i))),
            Some(Token::Float(f)) => Ok(Operand::Lit(Literal::Float(f))),
            Some(Token::Minus) => match self.next() {
                Some(Token::Int(i)) => Ok(Operand::Lit(Literal::Int(-i))),
                Some(Token::Float(f)) => Ok(Operand::Lit(Literal::Float(-f))),
                _ => Err(syntax(position, "expected a number after '-'")),
            },
            Some(Token::Var(var)) => {
                let mut offset = 0;
                if matches!(self.peek(), Some(Token::Plus | Token::Minus))
                    && matches!(self.tokens.get(self.at + 1).map(|(t, _)| t), Some(Token::Duration(_)))
                {
                    let sign = if self.next() == Some(Token::Minus) { -1 } else { 1 };
                    if let Some(Token::Duration(seconds)) = self.next() {
                        offset = sign * seconds;
                    }
                    if var == Var::User {
                        return Err(syntax(position, "@user takes no offset"));
                    }
                }
                Ok(Operand::Var(var, offset))
            }
            Some(Token::Duration(_)) => Err(syntax(position, "a duration goes after @now or @today, e.g. @now - 7d")),
            Some(_) => Err(syntax(position, "expected a field, a value or a variable")),
            None => Err(syntax(position, "the expression ends too early")),
        }
    }
}

/// Joins a chain `a || b || c ...` (or `&&`) as a balanced tree: both are associative, and the
/// tree's depth, which every later pass recurses through, then grows with the logarithm of the
/// chain's length instead of the length (a flat 4 KB chain would otherwise exhaust the stack).
fn balanced(mut terms: Vec<Expr>, join: fn(Box<Expr>, Box<Expr>) -> Expr) -> Expr {
    if terms.len() <= 1 {
        return terms.pop().expect("a chain has at least one term");
    }
    let right = terms.split_off(terms.len() / 2);
    join(Box::new(balanced(terms, join)), Box::new(balanced(right, join)))
}

/// Parses an expression into its syntax tree.
pub fn parse_expr(input: &str) -> Result<Expr, QueryError> {
    let tokens = lex(input)?;
    if tokens.is_empty() {
        return Err(syntax(0, "the expression is empty"));
    }
    let mut parser = Parser {
        tokens,
        at: 0,
        end: input.len(),
    };
    let expr = parser.or(0)?;
    if parser.at < parser.tokens.len() {
        return Err(syntax(parser.position(), "unexpected text after the expression"));
    }
    Ok(expr)
}
