//! Accounts and sessions: passwords, tokens, org roles, browser sessions (cookies, CSRF,
//! CORS, security headers), the key ring that signs links, and the account flows with their
//! emails and pages (verification, email change, password reset); with the `[auth]` settings.

pub mod browser;
pub mod flows;
pub mod invitations;
pub mod keys;
pub mod login;
pub mod mail;
pub mod mfa;
pub mod oidc;
pub mod pages;
pub mod password;
pub mod roles;
pub mod session;
pub mod settings;

pub use password::{check_password, hash_password, hash_password_blocking, is_common_password, normalize_email};
pub(crate) use password::{confirm_own_password, verify_password};
pub(crate) use roles::grantable;
pub use roles::{is_superuser, rank, require_manager};
pub use session::{Origin, new_token, start_session};
