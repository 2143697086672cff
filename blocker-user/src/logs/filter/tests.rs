//! The built-in filters against realistic lines, and loading errors.

use super::*;

fn now() -> Zoned {
    "2026-12-01T12:00:00+00:00[UTC]"
        .parse()
        .expect("a valid time")
}

/// The address a filter finds in `line`, or None when the line is not a failure.
fn failure(filter: &Filter, line: &str) -> Option<String> {
    match filter.check_at(line, &now()) {
        LineVerdict::Failure { addr, .. } => Some(addr.to_string()),
        LineVerdict::Ignored | LineVerdict::NoMatch => None,
    }
}

/// What `line` gets without the literal prefilter: every expression is tried.
fn unfiltered(filter: &Filter, line: &str) -> LineVerdict {
    filter.verdict(line, (0..filter.failures.len()).collect(), &now())
}

fn assert_filter(name: &str, failures: &[(&str, &str)], others: &[&str]) {
    let filter = Filter::load(name).unwrap_or_else(|err| panic!("{name}: {err}"));
    assert_eq!(filter.name(), name);
    // The prefilter only skips work: it never changes a verdict.
    for line in failures
        .iter()
        .map(|(line, _)| *line)
        .chain(others.iter().copied())
    {
        assert_eq!(
            filter.check_at(line, &now()),
            unfiltered(&filter, line),
            "{name}: the prefilter changes the verdict on: {line}"
        );
    }
    for (line, addr) in failures {
        assert_eq!(
            failure(&filter, line).as_deref(),
            Some(*addr),
            "{name} should find {addr} in: {line}"
        );
    }
    for line in others {
        assert_eq!(
            failure(&filter, line),
            None,
            "{name} should not match: {line}"
        );
    }
}

#[test]
fn sshd() {
    assert_filter(
        "sshd",
        &[
            ("Dec  1 10:00:01 host sshd[100]: Failed password for root from 203.0.113.5 port 22 ssh2", "203.0.113.5"),
            ("Dec  1 10:00:02 host sshd[101]: Failed password for invalid user admin from 203.0.113.6 port 4242 ssh2", "203.0.113.6"),
            ("Dec  1 10:00:02 host sshd-session[101]: Failed keyboard-interactive/pam for invalid user x from 2001:db8::5 port 4242 ssh2", "2001:db8::5"),
            ("Dec  1 10:00:02 host sshd[101]: Failed publickey for invalid user git from 203.0.113.7 port 22 ssh2: RSA SHA256:abc", "203.0.113.7"),
            // A user name that names someone else: the address is sshd's own, the last one.
            ("Dec  1 10:00:02 host sshd[101]: Failed password for invalid user a from 192.0.2.1 port 1 from 203.0.113.8 port 22 ssh2", "203.0.113.8"),
            ("Dec  1 10:00:03 host sshd[102]: Invalid user oracle from 198.51.100.7 port 5555", "198.51.100.7"),
            ("2026-12-01T10:00:03.123456+00:00 host sshd[102]: Invalid user oracle from ::ffff:198.51.100.9 port 5555", "198.51.100.9"),
            ("Dec  1 10:00:04 host sshd[103]: error: PAM: Authentication failure for root from 198.51.100.8", "198.51.100.8"),
            ("Dec  1 10:00:09 host sshd[108]: ROOT LOGIN REFUSED FROM 203.0.113.11", "203.0.113.11"),
            ("Dec  1 10:00:14 host sshd[112]: User bob from 203.0.113.15 not allowed because not listed in AllowUsers", "203.0.113.15"),
            // A link-local peer's address carries its zone (getnameinfo).
            ("Dec  1 10:00:03 host sshd[102]: Invalid user oracle from fe80::1%eth0 port 5555", "fe80::1"),
            ("Dec  1 10:00:01 host sshd[100]: Failed password for root from fe80::2%enp1s0.10 port 22 ssh2", "fe80::2"),
            ("Dec  1 10:00:08 host sshd[107]: error: maximum authentication attempts exceeded for root from 203.0.113.10 port 22 ssh2 [preauth]", "203.0.113.10"),
            ("Dec  1 10:00:07 host sshd[106]: Disconnecting invalid user admin 203.0.113.12 port 22: Too many authentication failures [preauth]", "203.0.113.12"),
            ("Dec  1 10:00:11 host sshd[110]: Received disconnect from 203.0.113.13 port 1234:3: com.jcraft.jsch.JSchException: Auth fail [preauth]", "203.0.113.13"),
            ("Dec  1 10:00:11 host sshd[110]: Disconnecting authenticating user root 203.0.113.14 port 22: Change of username or service not allowed: (root,ssh-connection) -> (admin,ssh-connection) [preauth]", "203.0.113.14"),
        ],
        &[
            "Dec  1 10:00:04 host sshd[103]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=198.51.100.8  user=root",
            "Dec  1 10:00:05 host sshd[104]: Accepted publickey for alice from 192.0.2.10 port 50000 ssh2: RSA SHA256:abc",
            "Dec  1 10:00:05 host sshd[104]: Accepted password for alice from 192.0.2.10 port 50000 ssh2",
            "Dec  1 10:00:05 host sshd[104]: Failed publickey for alice from 192.0.2.10 port 50000 ssh2: RSA SHA256:abc",
            "Dec  1 10:00:06 host sshd[105]: Connection closed by 203.0.113.9 port 3333 [preauth]",
            "Dec  1 10:00:07 host sshd[106]: Disconnecting: Too many authentication failures [preauth]",
            "Dec  1 10:00:11 host sshd[110]: Received disconnect from 203.0.113.13 port 1234:11: Bye Bye [preauth]",
            "Dec  1 10:00:13 host CRON[200]: pam_unix(cron:session): session opened for user root by (uid=0)",
            "Dec  1 10:00:13 host sudo[200]: Failed password for root from 203.0.113.5 port 22 ssh2",
            "Dec  1 10:00:13 host sshd[200]: Invalid user x from attacker.example.org port 1",
        ],
    );
}

/// An sshd line whose user name (or other text the client chose) names another address: the
/// failure is the connection's own, whatever the client wrote.
#[test]
fn sshd_user_names_cannot_name_another_address() {
    // sshd cuts a disconnect's message to 100 bytes ("Disconnecting %s: %.100s").
    let disconnecting = |preamble: &str, addr: &str, message: &str| {
        let message: String = message.chars().take(100).collect();
        format!("Dec  1 10:00:11 host sshd[110]: Disconnecting {preamble} {addr} port 22: {message} [preauth]")
    };
    let change = |user: &str, service: &str| {
        format!(
            "Change of username or service not allowed: ({user},{service}) -> (y,ssh-connection)"
        )
    };
    // sshd cuts a user name at its first ":" (what follows is an authentication style); the
    // service it keeps whole.
    let logged = |user: &str| user.split(':').next().unwrap_or_default().to_string();
    let in_user = |user: &str| {
        let user = logged(user);
        disconnecting(
            &format!("invalid user {user}"),
            "203.0.113.14",
            &change(&user, "ssh-connection"),
        )
    };
    let too_many = |user: &str| {
        let user = logged(user);
        disconnecting(
            &format!("authenticating user {user}"),
            "203.0.113.12",
            "Too many authentication failures",
        )
    };
    // The first request's service is the client's too, and comes after the address.
    let in_service =
        |service: &str| disconnecting("invalid user x", "203.0.113.16", &change("x", service));
    let injected = [
        (in_user("x 10.0.0.1 on"), "203.0.113.14"),
        // The copy in the reason fills sshd's 100 bytes, ending at a "(" of the client's.
        (
            in_user(" :: port 1: Change of username or service not allowed: ("),
            "203.0.113.14",
        ),
        (too_many("a 192.0.2.1 on"), "203.0.113.12"),
        (too_many("a 192.0.2.1 port 1"), "203.0.113.12"),
        (
            too_many("a 192.0.2.1 port 1: Too many authentication failures"),
            "203.0.113.12",
        ),
        (
            in_service(" 192.0.2.1: Change of username or service not allowed"),
            "203.0.113.16",
        ),
        (
            in_service(" 192.0.2.1 port 1: Change of username or service not allowed: (y"),
            "203.0.113.16",
        ),
        // Another reason's tail in the service: whole, and cut by the 100 bytes before its ")".
        (
            in_service(" 192.0.2.1 port 1: Too many authentication failures"),
            "203.0.113.16",
        ),
        (
            in_service("xxx 192.0.2.1 port 1: Too many authentication failures"),
            "203.0.113.16",
        ),
    ];
    let mut failures: Vec<(&str, &str)> = injected
        .iter()
        .map(|(line, addr)| (line.as_str(), *addr))
        .collect();
    // The other lines with a user name before the address.
    failures.extend([
        ("Dec  1 10:00:02 host sshd[101]: Failed password for invalid user a from 192.0.2.1 port 1 ssh2: x from 203.0.113.21 port 22 ssh2", "203.0.113.21"),
        ("Dec  1 10:00:03 host sshd[102]: Invalid user a from 192.0.2.1 port 1 from 203.0.113.22 port 5555", "203.0.113.22"),
        ("Dec  1 10:00:03 host sshd[102]: Invalid user a from 192.0.2.1 on from 203.0.113.23 port 5555", "203.0.113.23"),
        ("Dec  1 10:00:04 host sshd[103]: error: PAM: Authentication failure for illegal user a from 192.0.2.1 via from 203.0.113.24", "203.0.113.24"),
        ("Dec  1 10:00:08 host sshd[107]: error: maximum authentication attempts exceeded for invalid user a from 192.0.2.1 port 1 ssh2 from 203.0.113.25 port 22 ssh2 [preauth]", "203.0.113.25"),
    ]);
    assert_filter("sshd", &failures, &[]);
}

/// For a user that exists, sshd may write the client's text after the address: hostbased
/// authentication's client user and host names. The name before it is the system's.
#[test]
fn sshd_client_text_after_the_address_names_no_one() {
    assert_filter(
        "sshd",
        &[
            ("Dec  1 10:00:02 host sshd[101]: Failed hostbased for root from 203.0.113.20 port 22 ssh2: RSA SHA256:abc, client user \"a from 192.0.2.1 port 1: x\", client host \"h\"", "203.0.113.20"),
            ("Dec  1 10:00:02 host sshd[101]: Failed hostbased for root from 203.0.113.20 port 22 ssh2: RSA SHA256:abc, client user \"a\", client host \"h from 192.0.2.1 port 1\"", "203.0.113.20"),
            ("Dec  1 10:00:02 host sshd[101]: Failed password for root from 203.0.113.20 port 22 ssh2", "203.0.113.20"),
        ],
        &[],
    );
}

#[test]
fn sshd_failures_carry_the_line_time() {
    let filter = Filter::load("sshd").expect("built-in");
    let verdict = filter.check_at(
        "Nov 30 23:59:58 host sshd[1]: Invalid user a from 192.0.2.1 port 1",
        &now(),
    );
    assert_eq!(
        verdict,
        LineVerdict::Failure {
            addr: "192.0.2.1".parse().expect("an address"),
            time: Some("2026-11-30T23:59:58Z".parse().expect("a time")),
        }
    );
}

#[test]
fn ftp_servers() {
    assert_filter(
        "vsftpd",
        &[
            ("Dec  1 10:00:00 host vsftpd[123]: pam_unix(vsftpd:auth): authentication failure; logname= uid=0 euid=0 tty=ftp ruser=bob rhost=203.0.113.5", "203.0.113.5"),
            ("Dec  1 10:00:00 host vsftpd: (pam_unix) authentication failure; logname= uid=0 euid=0 tty= ruser= rhost=::ffff:203.0.113.6  user=bob", "203.0.113.6"),
            ("Tue Dec  1 10:00:00 2026 [pid 1234] [bob] FAIL LOGIN: Client \"::ffff:203.0.113.7\"", "203.0.113.7"),
        ],
        &[
            "Tue Dec  1 10:00:00 2026 [pid 1234] [bob] OK LOGIN: Client \"203.0.113.7\"",
            "Tue Dec  1 10:00:00 2026 [pid 1234] CONNECT: Client \"203.0.113.7\"",
        ],
    );
    assert_filter(
        "proftpd",
        &[
            ("Dec  1 10:00:00 host proftpd[2344]: host.example.com (client.example.org[203.0.113.5]) - USER bob (Login failed): Incorrect password", "203.0.113.5"),
            ("Dec  1 10:00:00 host proftpd[2344] host.example.com (::ffff:203.0.113.6[::ffff:203.0.113.6]): USER nobody: no such user found from ::ffff:203.0.113.6 [::ffff:203.0.113.6] to ::ffff:10.0.0.1:21", "203.0.113.6"),
            ("Dec  1 10:00:00 host proftpd[2344]: host.example.com (client[203.0.113.7]) - Maximum login attempts (3) exceeded, connection refused", "203.0.113.7"),
            ("Dec  1 10:00:00 host proftpd[2344]: host.example.com (client[203.0.113.8]) - SECURITY VIOLATION: root login attempted.", "203.0.113.8"),
        ],
        &["Dec  1 10:00:00 host proftpd[2344]: host.example.com (client[203.0.113.5]) - USER bob: Login successful."],
    );
    assert_filter(
        "pure-ftpd",
        &[
            ("Dec  1 10:00:00 host pure-ftpd: (?@203.0.113.5) [WARNING] Authentication failed for user [bob]", "203.0.113.5"),
            ("Dec  1 10:00:00 host pure-ftpd[77]: (?@2001:db8::7) [WARNING] Authentication failed for user [a b]", "2001:db8::7"),
        ],
        &["Dec  1 10:00:00 host pure-ftpd: (bob@203.0.113.5) [INFO] bob is now logged in"],
    );
}

#[test]
fn web_servers() {
    assert_filter(
        "apache-auth",
        &[
            ("[Tue Dec 01 10:00:00.123456 2026] [auth_basic:error] [pid 1234] [client 203.0.113.5:51234] AH01618: user bob not found: /private", "203.0.113.5"),
            ("[Tue Dec 01 10:00:00.123456 2026] [auth_basic:error] [pid 1234:tid 99] [client 203.0.113.6:51234] AH01617: user bob: authentication failure for \"/private\": Password Mismatch", "203.0.113.6"),
            ("[Tue Dec 01 10:00:00.123456 2026] [auth_digest:error] [pid 1234] [client 2001:db8::9:51234] AH01790: user `bob' in realm `private' not found: /private", "2001:db8::9"),
            ("[Tue Dec 01 10:00:00 2026] [error] [client 203.0.113.8] user bob not found: /private", "203.0.113.8"),
        ],
        &["[Tue Dec 01 10:00:00.123456 2026] [core:error] [pid 1234] [client 203.0.113.5:51234] AH00126: Invalid URI in request GET /x HTTP/1.1"],
    );
    assert_filter(
        "nginx-http-auth",
        &[
            ("2026/12/01 10:00:00 [error] 1234#1234: *5 user \"bob\": password mismatch, client: 203.0.113.5, server: example.com, request: \"GET /private HTTP/1.1\", host: \"example.com\"", "203.0.113.5"),
            ("2026/12/01 10:00:00 [error] 1234#1234: *6 user \"eve\" was not found in \"/etc/nginx/.htpasswd\", client: 2001:db8::6, server: example.com, request: \"GET / HTTP/1.1\"", "2001:db8::6"),
        ],
        &["2026/12/01 10:00:00 [error] 1234#1234: *7 no user/password was provided for basic authentication, client: 203.0.113.5, server: example.com, request: \"GET / HTTP/1.1\""],
    );
    let access = |path: &str, status: u16| {
        format!("203.0.113.5 - - [01/Dec/2026:10:00:00 +0000] \"GET {path} HTTP/1.1\" {status} 162 \"-\" \"Mozilla/5.0\"")
    };
    for filter in ["nginx-botsearch", "apache-botsearch"] {
        let probes = [
            access("/wp-login.php", 404),
            access("/blog/wp-admin/setup-config.php?step=1", 404),
            access("/.env", 404),
            access("/phpMyAdmin/index.php", 404),
        ];
        let failures: Vec<(&str, &str)> = probes
            .iter()
            .map(|line| (line.as_str(), "203.0.113.5"))
            .collect();
        assert_filter(
            filter,
            &failures,
            &[
                &access("/wp-login.php", 200),
                &access("/index.html", 404),
                &access("/environment", 404),
            ],
        );
    }
    assert_filter(
        "nginx-botsearch",
        &[("2026/12/01 10:00:00 [error] 99#99: *1 open() \"/var/www/html/wp-login.php\" failed (2: No such file or directory), client: 203.0.113.9, server: _, request: \"GET /wp-login.php HTTP/1.1\"", "203.0.113.9")],
        &[],
    );
    assert_filter(
        "apache-botsearch",
        &[("[Tue Dec 01 10:00:00.123456 2026] [core:error] [pid 1] [client 203.0.113.9:4444] AH00128: File does not exist: /var/www/html/phpmyadmin", "203.0.113.9")],
        &[],
    );
}

/// nginx's error line for a file it did not find, cut as nginx cuts a line: at 2048 bytes
/// with the newline, keeping the last 50 of them for the error code ("..." marks the cut).
fn nginx_not_found(path: &str, client: &str) -> String {
    const MAX: usize = 2048;
    let mut line = format!("2026/12/01 10:00:00 [error] 1#1: *5 open() \"{path}\" failed");
    if line.len() > MAX - 50 {
        line.truncate(MAX - 50);
        line.push_str("...");
    }
    line.push_str(&format!(
        " (2: No such file or directory), client: {client}, server: _, request: \"GET /x HTTP/1.1\", host: \"h\""
    ));
    line.truncate(MAX - 1);
    line
}

/// nginx writes the decoded path unescaped, so a request can put its own
/// `" failed (2: ...), client: <addr>, server:` before nginx's, or in a header after it.
#[test]
fn nginx_paths_cannot_name_another_client() {
    let fake = "\" failed (2: No such file or directory), client: 192.0.2.1, server: x";
    let in_path = format!("2026/12/01 10:00:00 [error] 1#1: *5 open() \"/var/www/html/wp-login.php{fake}\" failed (2: No such file or directory), client: 203.0.113.9, server: _, request: \"GET /wp-login.php%22%20failed%20(2:%20No%20such%20file%20or%20directory),%20client:%20192.0.2.1,%20server:%20x HTTP/1.1\", host: \"h\"");
    let fake_index = fake.replace(" failed", " is not found");
    let index = format!("2026/12/01 10:00:00 [error] 1#1: *6 \"/var/www/html/wp-admin{fake_index}/index.php\" is not found (2: No such file or directory), client: 203.0.113.10, server: _, request: \"GET /wp-admin%22... HTTP/1.1\", host: \"h\"");
    // A forged `, request:` too hides nginx's client field: the line names no one.
    let with_request = in_path.replacen(
        ", server: x\"",
        ", server: x, request: \"GET / HTTP/1.1\"\"",
        1,
    );
    // A forgery in a Referer header, after nginx's `, request:`, is not taken; its error
    // code after nginx's makes the line name no one.
    let in_referrer = format!("2026/12/01 10:00:00 [error] 1#1: *7 open() \"/var/www/html/.env\" failed (2: No such file or directory), client: 203.0.113.11, server: _, request: \"GET /.env HTTP/1.1\", host: \"h\", referrer: \"a{fake}, request: \"GET /.env HTTP/1.1\", host: \"h\"");
    // A path long enough that nginx cuts its own client field off (or all of it but a few
    // bytes), leaving the forged one whole, even before a forged `, request:`: the error code
    // nginx writes after it gives it away.
    let padding = |bytes: usize| format!("{}{}", "/a".repeat(bytes / 2), "b".repeat(bytes % 2));
    let cut = nginx_not_found(
        &format!(
            "/var/www/html/wp-login.php{fake}, request: \"GET / HTTP/1.1\"{}",
            padding(2100)
        ),
        "203.0.113.12",
    );
    let head =
        format!("2026/12/01 10:00:00 [error] 1#1: *5 open() \"/var/www/html/wp-login.php{fake}");
    let client_cut = nginx_not_found(
        &format!(
            "/var/www/html/wp-login.php{fake}{}",
            padding(2048 - 50 - head.len() - "\" failed".len())
        ),
        "203.0.113.12",
    );
    assert!(cut.contains("... (2: No such file"), "{cut}");
    assert!(client_cut.ends_with(", client: 203.0.11"), "{client_cut}");
    assert_filter(
        "nginx-botsearch",
        &[(&in_path, "203.0.113.9"), (&index, "203.0.113.10")],
        &[&with_request, &in_referrer, &cut, &client_cut],
    );
}

#[test]
fn mail_servers() {
    assert_filter(
        "postfix",
        &[
            ("Dec  1 10:00:00 mail postfix/smtpd[1234]: warning: unknown[203.0.113.5]: SASL LOGIN authentication failed: UGFzc3dvcmQ6", "203.0.113.5"),
            ("Dec  1 10:00:00 mail postfix/submission/smtpd[1234]: warning: host.example.org[2001:db8::5]: SASL PLAIN authentication failed: authentication failure", "2001:db8::5"),
        ],
        &[
            "Dec  1 10:00:00 mail postfix/smtpd[1234]: connect from unknown[203.0.113.5]",
            "Dec  1 10:00:00 mail postfix/smtpd[1234]: NOQUEUE: reject: RCPT from unknown[203.0.113.5]: 554 5.7.1 Relay access denied",
        ],
    );
    assert_filter(
        "dovecot",
        &[
            ("Dec  1 10:00:00 mail dovecot: imap-login: Disconnected (auth failed, 3 attempts in 12 secs): user=<bob>, method=PLAIN, rip=203.0.113.5, lip=10.0.0.1, session=<abc>", "203.0.113.5"),
            ("Dec  1 10:00:00 mail dovecot: pop3-login: Aborted login (auth failed, 1 attempts in 2 secs): user=<>, method=PLAIN, rip=203.0.113.6, lip=10.0.0.1, TLS, session=<x>", "203.0.113.6"),
            ("Dec  1 10:00:00 mail dovecot: imap-login: Login aborted: Connection closed (auth failed, 3 attempts in 10 secs) (auth_failed): user=<bob>, method=PLAIN, rip=203.0.113.7, lip=10.0.0.1, TLS, session=<x>", "203.0.113.7"),
            ("Dec  1 10:00:00 mail dovecot: auth-worker(1234): pam(bob,203.0.113.8,<sess>): pam_authenticate() failed: Authentication failure (password mismatch?)", "203.0.113.8"),
            ("Dec  1 10:00:00 mail dovecot: auth: passwd-file(eve,203.0.113.9): unknown user", "203.0.113.9"),
        ],
        &["Dec  1 10:00:00 mail dovecot: imap-login: Login: user=<bob>, method=PLAIN, rip=203.0.113.5, lip=10.0.0.1, mpid=1, TLS"],
    );
}

#[test]
fn ignoreregex_turns_a_failure_into_an_ignored_line() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("mine.conf");
    std::fs::write(
        &path,
        "[Definition]\nfailregex = ^login failed from <HOST>$\nignoreregex = from 192\\.0\\.2\\.\n",
    )
    .expect("written");
    let filter = Filter::load(&path.display().to_string()).expect("loads");
    assert_eq!(filter.name(), "mine");
    assert!(matches!(
        filter.check("login failed from 203.0.113.1"),
        LineVerdict::Failure { time: None, .. }
    ));
    assert_eq!(
        filter.check("login failed from 192.0.2.1"),
        LineVerdict::Ignored
    );
    assert_eq!(
        filter.check("login worked from 192.0.2.1"),
        LineVerdict::NoMatch
    );
}

#[test]
fn a_broken_filter_names_file_line_and_reason() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("broken.conf");
    std::fs::write(
        &path,
        "[Definition]\n# a comment\nfailregex = ^ok from <HOST>$\n            ^(unclosed from <HOST>\n",
    )
    .expect("written");
    let err = Filter::load(&path.display().to_string()).expect_err("does not load");
    assert_eq!(
        err.to_string(),
        format!(
            "filter {} line 4: failregex: unbalanced parenthesis",
            path.display()
        )
    );
    let err = Filter::load("no-such-filter").expect_err("unknown");
    assert!(
        err.to_string()
            .contains("no built-in filter of that name (sshd,"),
        "{err}"
    );
    let missing = dir.path().join("missing.conf");
    let err = Filter::load(&missing.display().to_string()).expect_err("missing");
    assert_eq!(
        err.to_string(),
        format!("filter {}: no such file", missing.display())
    );
}

#[test]
fn init_wins_over_definition_which_wins_over_default() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("layers.conf");
    let filter_text = |init: &str| {
        format!(
            "[DEFAULT]\nword = default\nmode = normal\n[Definition]\nword = definition\n\
             re-normal = ^<word> from <HOST>$\nre-strict = ^never <HOST>$\n\
             failregex = <re-<mode>>\n{init}"
        )
    };
    std::fs::write(&path, filter_text("")).expect("written");
    let filter = Filter::load(&path.display().to_string()).expect("loads");
    assert!(matches!(
        filter.check("definition from 192.0.2.1"),
        LineVerdict::Failure { .. }
    ));
    assert_eq!(filter.check("default from 192.0.2.1"), LineVerdict::NoMatch);
    std::fs::write(&path, filter_text("[Init]\nword = init\n")).expect("written");
    let filter = Filter::load(&path.display().to_string()).expect("loads");
    assert!(matches!(
        filter.check("init from 192.0.2.1"),
        LineVerdict::Failure { .. }
    ));
    std::fs::write(&path, filter_text("[Init]\nmode = strict\n")).expect("written");
    let filter = Filter::load(&path.display().to_string()).expect("loads");
    assert_eq!(
        filter.check("definition from 192.0.2.1"),
        LineVerdict::NoMatch
    );
}

/// The daemon shares one compiled filter between the tasks that follow its logs.
#[test]
fn a_filter_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Filter>();
}
