//! The create request's validation, on requests as the API receives them.

use super::image::{parse_ipv4_like_a_resolver, registry_of, validate_image};
use super::policy::count_cpu_list;
use super::*;
use crate::docker::pull_auth::Credential;
use serde_json::json;

fn parse(value: serde_json::Value) -> Result<CreateSpec, SpecError> {
    parse_create(value.to_string().as_bytes())
}

fn base() -> serde_json::Value {
    json!({"claim_id": "claim-123", "image": "nvidia/cuda:11.8-runtime-ubuntu20.04"})
}

fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
    let mut b = base();
    b[key] = value;
    b
}

#[test]
fn the_original_designs_example_is_accepted() {
    let spec = parse(json!({
        "claim_id": "claim-123",
        "image": "nvidia/cuda:11.8-runtime-ubuntu20.04",
        "gpu_ids": [0, 1],
        "port_mappings": [{"host_port": 8888, "container_port": 8888}],
        "env_vars": ["NVIDIA_VISIBLE_DEVICES=0,1"],
        "command": ["/bin/bash", "-c", "sleep infinity"]
    }))
    .unwrap();
    assert_eq!(spec.gpus, GpuRequest::Ids(vec![0, 1]));
    assert_eq!(
        spec.ports,
        vec![PortMapping {
            host_port: 8888,
            container_port: 8888,
            protocol: Protocol::Tcp,
            remote_port: 0,
        }]
    );
    assert!(
        spec.env.is_empty(),
        "the agent sets NVIDIA_VISIBLE_DEVICES itself"
    );
    assert_eq!(spec.container_name(), "utopia-claim-123");
}

#[test]
fn remote_ports_are_optional_and_zero_lets_frps_choose() {
    let spec = parse(with(
        "port_mappings",
        json!([
            {"host_port": 8888, "container_port": 8888, "remote_port": 7005},
            {"host_port": 8889, "container_port": 8889, "remote_port": 0},
            {"host_port": 8890, "container_port": 8890},
            {"host_port": 8890, "container_port": 53, "protocol": "udp", "remote_port": 7005}
        ]),
    ))
    .unwrap();
    let remote: Vec<u16> = spec.ports.iter().map(|p| p.remote_port).collect();
    assert_eq!(remote, [7005, 0, 0, 7005]);
}

#[test]
fn optional_fields() {
    let spec = parse(json!({
        "claim_id": "c", "image": "busybox", "gpu_count": 2,
        "port_mappings": [{"host_port": 5353, "container_port": 53, "protocol": "udp"}],
        "env_vars": ["A=1", "B=", "C=x=y"],
        "memory_mb": 1024, "cpus": 1.5, "shm_size_mb": 8192
    }))
    .unwrap();
    assert_eq!(spec.gpus, GpuRequest::Count(2));
    assert_eq!(spec.ports[0].protocol, Protocol::Udp);
    assert_eq!(
        spec.env,
        vec![
            ("A".into(), "1".into()),
            ("B".into(), "".into()),
            ("C".into(), "x=y".into())
        ]
    );
    assert_eq!(
        (spec.memory_mb, spec.cpus, spec.shm_size_mb),
        (Some(1024), Some(1.5), Some(8192))
    );
}

#[test]
fn injection_corpus_is_rejected() {
    let cases = [
        ("image", with("image", json!("--privileged"))),
        ("image", with("image", json!("-v/:/host"))),
        ("image", with("image", json!("busybox --privileged"))),
        ("image", with("image", json!(""))),
        ("image", with("image", json!("Busybox"))),
        ("env_vars[0]", with("env_vars", json!(["A=1\nB=2"]))),
        ("env_vars[0]", with("env_vars", json!(["A=1\r"]))),
        ("env_vars[0]", with("env_vars", json!(["A=\u{0}"]))),
        ("env_vars[0]", with("env_vars", json!(["HOME"]))),
        ("env_vars[0]", with("env_vars", json!(["-e=1"]))),
        ("env_vars[0]", with("env_vars", json!(["1A=1"]))),
        (
            "env_vars",
            with("env_vars", json!(["NVIDIA_VISIBLE_DEVICES=all"])),
        ),
        (
            "env_vars[0]",
            with("env_vars", json!(["NVIDIA_MOFED=enabled"])),
        ),
        (
            "env_vars[1]",
            with("env_vars", json!(["A=1", "NVIDIA_IMEX_CHANNELS=all"])),
        ),
        (
            "env_vars[0]",
            with("env_vars", json!(["NVIDIA_MIG_CONFIG_DEVICES=all"])),
        ),
        ("claim_id", with("claim_id", json!("a/b"))),
        ("claim_id", with("claim_id", json!(".."))),
        ("claim_id", with("claim_id", json!("a..b"))),
        ("claim_id", with("claim_id", json!("-x"))),
        ("claim_id", with("claim_id", json!(""))),
        ("claim_id", with("claim_id", json!("x".repeat(65)))),
        (
            "port_mappings[0].host_port",
            with(
                "port_mappings",
                json!([{"host_port": 0, "container_port": 80}]),
            ),
        ),
        (
            "port_mappings[0].host_port",
            with(
                "port_mappings",
                json!([{"host_port": 70000, "container_port": 80}]),
            ),
        ),
        (
            "port_mappings[0].container_port",
            with(
                "port_mappings",
                json!([{"host_port": 80, "container_port": -1}]),
            ),
        ),
        (
            "port_mappings[0].remote_port",
            with(
                "port_mappings",
                json!([{"host_port": 80, "container_port": 80, "remote_port": 65536}]),
            ),
        ),
        (
            "port_mappings[0].remote_port",
            with(
                "port_mappings",
                json!([{"host_port": 80, "container_port": 80, "remote_port": -2}]),
            ),
        ),
        (
            "port_mappings[0].remote_port",
            with(
                "port_mappings",
                json!([{"host_port": 80, "container_port": 80, "remote_port": "{{.Envs.X}}"}]),
            ),
        ),
        (
            "port_mappings[1].remote_port",
            with(
                "port_mappings",
                json!([
                    {"host_port": 80, "container_port": 80, "remote_port": 7005},
                    {"host_port": 81, "container_port": 81, "remote_port": 7005}
                ]),
            ),
        ),
        (
            "port_mappings[1].host_port",
            with(
                "port_mappings",
                json!([{"host_port": 80, "container_port": 80}, {"host_port": 80, "container_port": 81}]),
            ),
        ),
        (
            "port_mappings[0].protocol",
            with(
                "port_mappings",
                json!([{"host_port": 80, "container_port": 80, "protocol": "sctp"}]),
            ),
        ),
        ("gpu_ids", with("gpu_ids", json!([0, 0]))),
        ("gpu_ids", with("gpu_ids", json!([-1]))),
        ("command[0]", with("command", json!(["a\u{0}b"]))),
        ("body", with("privileged", json!(true))),
        ("body", with("volumes", json!(["/:/host"]))),
        ("body", with("network_mode", json!("host"))),
        ("claim_id", json!({"image": "busybox"})),
        ("body", json!([])),
        ("memory_mb", with("memory_mb", json!(1))),
        ("cpus", with("cpus", json!(0))),
        ("shm_size_mb", with("shm_size_mb", json!(0))),
    ];
    for (field, body) in cases {
        match parse(body.clone()) {
            Err(e) => assert_eq!(e.field, field, "{body}: {e}"),
            Ok(spec) => panic!("accepted {body}: {spec:?}"),
        }
    }
    let unknown = parse(with("privileged", json!(true))).unwrap_err();
    assert!(unknown.message.contains("privileged"), "{unknown}");
    let both = parse(json!({"claim_id":"c","image":"b","gpu_ids":[0],"gpu_count":1}));
    assert_eq!(both.unwrap_err().field, "gpu_count");
    let count_and_env = parse(json!({"claim_id":"c","image":"b","gpu_count":1,
        "env_vars":["NVIDIA_VISIBLE_DEVICES=0"]}));
    assert_eq!(count_and_env.unwrap_err().field, "env_vars");
}

#[test]
fn visible_devices_must_match_the_assigned_gpus() {
    let ok = |env: &str, ids: serde_json::Value| {
        parse(json!({"claim_id":"c","image":"b","gpu_ids":ids,"env_vars":[env]}))
    };
    assert!(ok("NVIDIA_VISIBLE_DEVICES=0,1", json!([0, 1])).is_ok());
    assert!(ok("NVIDIA_VISIBLE_DEVICES=1,0", json!([0, 1])).is_ok());
    assert!(ok("NVIDIA_VISIBLE_DEVICES=0", json!([0, 1])).is_err());
    assert!(ok("NVIDIA_VISIBLE_DEVICES=0,1,2", json!([0, 1])).is_err());
    assert!(ok("NVIDIA_VISIBLE_DEVICES=all", json!([0, 1])).is_err());
    assert!(ok("NVIDIA_VISIBLE_DEVICES=0,0,1", json!([0, 1])).is_err());
    assert!(ok("NVIDIA_VISIBLE_DEVICES=GPU-1", json!([0])).is_err());
    assert!(ok("NVIDIA_VISIBLE_DEVICES=void", json!([])).is_ok());
    assert!(ok("NVIDIA_VISIBLE_DEVICES=0", json!([])).is_err());
    assert!(ok("NVIDIA_VISIBLE_DEVICES=all", json!([])).is_err());
    let twice = parse(json!({"claim_id":"c","image":"b","gpu_ids":[0],
        "env_vars":["NVIDIA_VISIBLE_DEVICES=0","NVIDIA_VISIBLE_DEVICES=0"]}));
    assert!(twice.is_err());
}

#[test]
fn type_errors_speak_the_users_words() {
    let cases = [
        (
            with(
                "port_mappings",
                json!([{"host_port": "80", "container_port": 80}]),
            ),
            "port_mappings[0].host_port",
            "a port number (1-65535)",
        ),
        (with("gpu_ids", json!([0.5])), "gpu_ids[0]", "an integer"),
        (with("cpus", json!("2")), "cpus", "a number"),
        (
            with("env_vars", json!("A=1")),
            "env_vars",
            "a list of strings",
        ),
        (json!([1, 2]), "body", "a JSON object"),
        (json!("x"), "body", "a JSON object"),
        (
            with("port_mappings", json!([7])),
            "port_mappings[0]",
            "a JSON object",
        ),
        (
            with(
                "port_mappings",
                json!([{"host_port": 1, "container_port": 2, "proto": "udp"}]),
            ),
            "port_mappings[0]",
            "unknown field \"proto\"",
        ),
        (json!({"claim_id": "c"}), "image", "is required"),
    ];
    for (body, field, words) in cases {
        let e = parse(body.clone()).unwrap_err();
        assert_eq!(e.field, field, "{body}: {e}");
        assert!(e.message.contains(words), "{body}: {e}");
        for rust in ["i64", "u16", "f64", "struct", "sequence", "CreateRequest"] {
            assert!(!e.to_string().contains(rust), "{body}: {e}");
        }
    }
    assert!(parse(with("gpu_count", serde_json::Value::Null)).is_ok());
    assert!(parse(with("port_mappings", serde_json::Value::Null)).is_ok());
    assert!(parse(with("env_vars", serde_json::Value::Null)).is_ok());
    assert_eq!(
        parse(with("image", serde_json::Value::Null))
            .unwrap_err()
            .field,
        "image"
    );
    let rewritten = humanize_json_error(
        "invalid type: sequence, expected struct CreateRequest with 10 elements at line 1",
    );
    assert_eq!(
        rewritten,
        "invalid type: a list, expected a JSON object at line 1"
    );
    assert_eq!(
        humanize_json_error("invalid type: string \"x\", expected u16"),
        "invalid type: string \"x\", expected a port number (1-65535)"
    );
}

#[test]
fn registry_auth_is_checked_without_quoting_secrets() {
    let with_auth = |image: &str, auth: serde_json::Value| {
        parse(json!({"claim_id": "c", "image": image, "registry_auth": auth}))
    };
    let spec = with_auth(
        "reg.example.com:5000/team/x:1",
        json!({"username": "alice", "password": "s3cret"}),
    )
    .unwrap();
    let auth = spec.registry_auth.clone().unwrap();
    assert_eq!(auth.server, "reg.example.com:5000");
    assert!(auth.credential == Credential::Password("s3cret".into()));
    assert!(!format!("{spec:?}").contains("s3cret"));
    let hub = with_auth(
        "busybox",
        json!({"server": "index.docker.io", "identity_token": "t"}),
    )
    .unwrap();
    assert_eq!(hub.registry_auth.unwrap().server, "docker.io");
    for (auth, field) in [
        (json!({"password": "s3cret"}), "registry_auth.username"),
        (json!({"username": "alice"}), "registry_auth"),
        (
            json!({"username": "a", "password": "s3cret", "identity_token": "s3cret"}),
            "registry_auth",
        ),
        (
            json!({"server": "other.example.com", "username": "a", "password": "s3cret"}),
            "registry_auth.server",
        ),
        (
            json!({"username": "a", "password": "s3cret\nx"}),
            "registry_auth.password",
        ),
        (
            json!({"username": "a:b", "password": "s3cret"}),
            "registry_auth.username",
        ),
        (
            json!({"username": "a", "password": ""}),
            "registry_auth.password",
        ),
        (
            json!({"username": "a", "passwd": "s3cret"}),
            "registry_auth",
        ),
        (
            json!({"username": 5, "password": "s3cret"}),
            "registry_auth.username",
        ),
        (json!("alice:s3cret"), "registry_auth"),
    ] {
        let e = with_auth("reg.example.com:5000/x", auth.clone()).unwrap_err();
        assert_eq!(e.field, field, "{auth}: {e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}

#[test]
fn registries_on_this_host_are_refused() {
    for local in [
        "127.0.0.1:5998/x",
        "127.0.0.1:1/x",
        "localhost/x",
        "localhost:5000/a/b:tag",
        "LOCALHOST:5000/x",
        "foo.localhost/x",
        "127.1:5000/x",
        "127.0.1/x",
        "2130706433:5000/x",
        "0x7f000001:5000/x",
        "0x7f.0.0.1:5000/x",
        "0177.0.0.1:5000/x",
        "0.0.0.0:5000/x",
        "0:5000/x",
        "169.254.169.254/x",
        "[::1]:5000/x",
        "[::1]/x",
        "[::]:5000/x",
        "[fe80::1]:5000/x",
        "[::ffff:7f00:1]:5000/x",
        "[::ffff:a9fe:a9fe]/x",
    ] {
        assert_eq!(
            validate_image(local),
            Ok(()),
            "{local} is a valid reference"
        );
        let registry = registry_of(local);
        assert!(
            check_registry_host(&registry).is_err(),
            "{local}: {registry} accepted"
        );
    }
    for remote in [
        "busybox",
        "nvidia/cuda:12",
        "registry.example.com/x",
        "10.0.0.5:5000/x",
        "192.168.1.1/x",
        "[2001:db8::1]:5000/x",
        "127.0.0.1.example.com/x",
        "my-registry:443/x",
    ] {
        assert_eq!(validate_image(remote), Ok(()), "{remote}");
        assert_eq!(
            check_registry_host(&registry_of(remote)),
            Ok(()),
            "{remote}"
        );
    }
    assert_eq!(registry_of("busybox"), "docker.io");
    assert_eq!(registry_of("nvidia/cuda:12"), "docker.io");
    assert_eq!(registry_of("Index.Docker.IO/library/x"), "docker.io");
    assert_eq!(
        registry_of("Reg.Example.com:5000/x"),
        "reg.example.com:5000"
    );
    assert_eq!(parse_ipv4_like_a_resolver("1.2.3.4.5"), None);
    assert_eq!(parse_ipv4_like_a_resolver("256.0.0.1"), None);
    assert_eq!(parse_ipv4_like_a_resolver("example"), None);
}

#[test]
fn the_policy_checks_registries_ports_cpus_and_memory() {
    let policy = CreatePolicy {
        allowed_registries: vec!["docker.io".into(), "reg.example.com:5000".into()],
        host_port_range: Some((20000, 29999)),
        host_cpus: Some(2),
        host_memory_mb: Some(1024),
        default_memory_mb: Some(512),
    };
    let check = |body: serde_json::Value| policy.check(&parse(body).unwrap());
    assert_eq!(check(base()), Ok(()));
    assert_eq!(
        check(with("image", json!("reg.example.com:5000/x"))),
        Ok(())
    );
    assert_eq!(
        check(with("image", json!("other.example.com/x")))
            .unwrap_err()
            .field,
        "image"
    );
    assert_eq!(
        check(with("image", json!("127.0.0.1:5000/x")))
            .unwrap_err()
            .field,
        "image"
    );
    let ports = |host: u16| {
        check(with(
            "port_mappings",
            json!([{"host_port": host, "container_port": 80}]),
        ))
    };
    assert_eq!(ports(20000), Ok(()));
    assert_eq!(ports(29999), Ok(()));
    assert_eq!(ports(22).unwrap_err().field, "port_mappings[0].host_port");
    assert!(ports(30000).is_err());
    assert_eq!(check(with("cpus", json!(2.0))), Ok(()));
    assert_eq!(check(with("cpus", json!(2.5))).unwrap_err().field, "cpus");
    assert_eq!(check(with("memory_mb", json!(1024))), Ok(()));
    assert_eq!(
        check(with("memory_mb", json!(1025))).unwrap_err().field,
        "memory_mb"
    );
    // A create without memory_mb gets the default; one with it keeps its own.
    let defaulted = |body: serde_json::Value, policy: &CreatePolicy| {
        let mut spec = parse(body).unwrap();
        policy.apply_defaults(&mut spec);
        spec.memory_mb
    };
    assert_eq!(defaulted(base(), &policy), Some(512));
    assert_eq!(defaulted(with("memory_mb", json!(100)), &policy), Some(100));
    let huge = CreatePolicy {
        default_memory_mb: Some(4096),
        ..policy.clone()
    };
    assert_eq!(defaulted(base(), &huge), Some(1024), "at most the host's");
    let open = CreatePolicy::default();
    assert_eq!(defaulted(base(), &open), None);
    assert_eq!(
        open.check(&parse(with("image", json!("any.example.com/x"))).unwrap()),
        Ok(())
    );
    assert!(open
        .check(&parse(with("image", json!("localhost:5000/x"))).unwrap())
        .is_err());
    assert_eq!(count_cpu_list("0-3,6"), Some(5));
    assert_eq!(count_cpu_list("0"), Some(1));
    assert_eq!(count_cpu_list("x"), None);
}

#[test]
fn image_references() {
    for good in [
        "busybox",
        "utopia-test-busybox:latest",
        "nvidia/cuda:11.8-runtime-ubuntu20.04",
        "localhost:5000/a/b:tag",
        "registry.example.com/team/img",
        "my-registry:443/x",
        "a__b/c--d/e.f_g",
        "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "busybox:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "localhost:65535/x",
    ] {
        assert_eq!(validate_image(good), Ok(()), "{good}");
    }
    for bad in [
        "-v/:/host",
        "--privileged",
        "UPPER",
        "a b",
        "a/",
        "/a",
        "a//b",
        "a:",
        "a:-tag",
        "a___b",
        "a.",
        ".a",
        "a@sha256:12",
        "a@",
        "-host.com/x",
        "host.com:port/x",
        "ünicode",
        "a\nb",
        // What docker's grammar lets through but the engine refuses when pulling: a port
        // that is not one, a digest of the wrong length or an unknown algorithm.
        "localhost:99999/x",
        "localhost:0/x",
        "busybox@sha256:0123456789abcdef0123456789abcdef",
        "busybox@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
        "busybox@md5:0123456789abcdef0123456789abcdef",
    ] {
        assert!(validate_image(bad).is_err(), "{bad}");
    }
}
