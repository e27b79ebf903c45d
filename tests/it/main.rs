//! The black-box integration suite: each module starts the real `ringcast` binary on
//! 127.0.0.1:0 and talks to it with real clients (tungstenite, raw TCP, signed REST calls).

mod support;
