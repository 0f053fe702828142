use super::*;

fn fed(body: &[u8]) -> Inspector {
    let mut inspector = Inspector::new();
    inspector.feed(body).expect("accepted");
    inspector
}

fn call(method: &str, tool: Option<&str>) -> Seen {
    Seen::Call(Call::Mcp(Mcp {
        method: method.into(),
        tool: tool.map(Into::into),
        ..mcp("")
    }))
}

fn mcp(method: &str) -> Mcp {
    Mcp {
        method: method.into(),
        tool: None,
        prompt: None,
        resource: None,
        arguments: Default::default(),
    }
}

#[test]
fn the_call_is_known_as_soon_as_method_and_tool_have_passed() {
    let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"refund","arguments":{"amount":"#;
    assert_eq!(fed(body).seen(), call("tools/call", Some("refund")));
    let list = br#"{"jsonrpc":"2.0","method":"tools/list","id":1"#;
    assert_eq!(fed(list).seen(), call("tools/list", None));
    // Order of members does not matter; escapes are decoded.
    let reordered =
        br#"{"params":{"arguments":{"name":"decoy"},"name":"re\u0066und"},"method":"tools/call"}"#;
    assert_eq!(fed(reordered).seen(), call("tools/call", Some("refund")));
}

#[test]
fn a_call_split_across_chunks_reads_the_same() {
    let body = br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"search_tickets"}}"#;
    for split in 1..body.len() {
        let mut inspector = Inspector::new();
        inspector.feed(&body[..split]).expect("first part");
        inspector.feed(&body[split..]).expect("second part");
        assert_eq!(
            inspector.seen(),
            call("tools/call", Some("search_tickets")),
            "split at {split}"
        );
        inspector.finish().expect("complete");
    }
}

#[test]
fn other_bodies_are_not_json_rpc() {
    assert_eq!(fed(b"plain text").seen(), Seen::NotJsonRpc);
    assert_eq!(fed(br#"{"amount": 5}"#).seen(), Seen::NotJsonRpc);
    assert_eq!(fed(br#"[1, {"a": 2}]"#).seen(), Seen::NotJsonRpc);
    assert_eq!(fed(br#"{"a": {"method": "x"}}"#).seen(), Seen::NotJsonRpc);
    assert_eq!(fed(br#"{"a": "x"#).seen(), Seen::NeedMore);
}

#[test]
fn duplicate_members_and_batches_are_refused() {
    for body in [
        &br#"{"method":"tools/list","method":"tools/call"}"#[..],
        br#"{"method":"tools/call","params":{"name":"a","name":"b"}}"#,
        br#"{"method":"tools/call","params":{"name":"a"},"params":{"name":"b"}}"#,
        br#"[{"jsonrpc":"2.0","method":"tools/call"}]"#,
        br#"[{}, {"method":"tools/call"}]"#,
    ] {
        let mut inspector = Inspector::new();
        let refused = inspector.feed(body);
        assert!(refused.is_err(), "{}", String::from_utf8_lossy(body));
        assert!(inspector.feed(b" ").is_err(), "a refusal is final");
    }
}

#[test]
fn nothing_after_the_decision_may_change_what_was_decided() {
    // Decided with no method in sight (padding first), then a method arrives.
    let mut inspector = fed(br#"{"pad":"xxxxxxxx","#);
    assert_eq!(inspector.decide(), None);
    assert!(inspector.feed(br#""method":"tools/call"}"#).is_err());

    // Decided on a tools/call whose tool was beyond the bound: the tool may not follow.
    let mut inspector = fed(br#"{"method":"tools/call","pad":"#);
    assert_eq!(inspector.decide(), Some(Call::Mcp(mcp("tools/call"))));
    assert!(
        inspector
            .feed(br#""x","params":{"name":"refund"}}"#)
            .is_err()
    );

    // Decided on the whole call: the rest streams.
    let mut inspector = fed(br#"{"method":"tools/call","params":{"name":"search"#);
    inspector.feed(br#"_tickets","#).expect("still the same");
    inspector.decide();
    inspector
        .feed(br#""arguments":{"q":"late \"method\": 1"}}}"#)
        .expect("arguments stream");
    inspector.finish().expect("complete");
}

#[test]
fn a_json_rpc_body_cut_short_is_refused_at_the_end() {
    let mut inspector = fed(br#"{"method":"tools/list","#);
    assert!(inspector.finish().is_err());
    let mut inspector = fed(br#"{"amount": "#);
    inspector
        .finish()
        .expect("not JSON-RPC: the server judges it");
}

#[test]
fn json_in_other_encodings_is_refused_and_a_utf8_bom_is_read_through() {
    let text = r#"{"method":"tools/call","params":{"name":"drop_database"}}"#;
    let utf16le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let utf16be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let utf32be: Vec<u8> = text
        .chars()
        .flat_map(|c| u32::from(c).to_be_bytes())
        .collect();
    for body in [utf16le, utf16be, utf32be] {
        let mut inspector = Inspector::new();
        assert!(inspector.feed(&body).is_err(), "{body:02x?}");
    }
    let mut bom = vec![0xEF, 0xBB, 0xBF];
    bom.extend_from_slice(text.as_bytes());
    assert_eq!(fed(&bom).seen(), call("tools/call", Some("drop_database")));
    // A control byte inside JSON is not JSON a strict parser accepts.
    let mut inspector = Inspector::new();
    assert!(inspector.feed(b"{\"method\":\"tools/\x00call\"}").is_err());
    // Binary bodies (a gRPC frame starts with a zero byte) are not JSON and pass.
    assert_eq!(fed(&[0, 0, 0, 0, 0x1a, 1, 2]).seen(), Seen::NotJsonRpc);
    // Too short to tell at the decision: a zero byte is refused, anything else is read.
    let mut inspector = fed(&[0]);
    inspector.decide();
    assert!(inspector.finish().is_err());
    let mut inspector = fed(b"{");
    assert_eq!(inspector.decide(), None);
    assert!(inspector.feed(br#""method":"x"}"#).is_err(), "late method");
}

#[test]
fn keys_a_server_reads_without_regard_to_case_and_lenient_json_are_refused() {
    for body in [
        &br#"{"method":"tools/call","params":{"name":"search","NAME":"drop_database"}}"#[..],
        br#"{"method":"tools/list","Method":"tools/call"}"#,
        "{\"METHOD\":\"tools/call\",\"param\u{17F}\":{\"name\":\"x\"}}".as_bytes(),
        br#"[{"JSONRPC":"2.0"}]"#,
        br#"{method:"tools/call",params:{name:"drop_database"}}"#,
        br#"{'method':'tools/call'}"#,
        br#"{"method":"tools/list" /* ,"method":"tools/call" */}"#,
        br#"{"id": NaN, "method": "tools/list"}"#,
    ] {
        let mut inspector = Inspector::new();
        assert!(
            inspector.feed(body).is_err(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // Case matters only for the members Deputy reads; other keys and values are free.
    let fine = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"Name":"N","METHOD":true,"v":[1.5e3,-2,null,false]}}}"#;
    assert_eq!(fed(fine).seen(), call("tools/call", Some("x")));
    // A byte-order mark split across the decision point is refused.
    let mut inspector = fed(&[0xEF, 0xBB]);
    inspector.decide();
    assert!(inspector.feed(br#"\xBF{"method":"tools/call"}"#).is_err());
}

#[test]
fn deep_nesting_is_refused_not_followed() {
    let mut inspector = Inspector::new();
    let deep = "[".repeat(MAX_DEPTH + 1);
    assert!(inspector.feed(deep.as_bytes()).is_err());
}

fn arguments(pointers: &[&str]) -> Inspector {
    let pointers: Vec<String> = pointers.iter().map(|p| (*p).to_owned()).collect();
    Inspector::for_protocol(&Protocol::Mcp(
        ArgumentPointers::parse(&pointers).expect("valid pointers"),
    ))
}

fn fed_with(mut inspector: Inspector, body: &[u8]) -> Result<Inspector, BodyRefused> {
    inspector.feed(body)?;
    Ok(inspector)
}

fn called_with(seen: Seen) -> std::collections::BTreeMap<String, serde_json::Value> {
    match seen {
        Seen::Call(Call::Mcp(mcp)) => mcp.arguments,
        other => panic!("not an MCP call: {other:?}"),
    }
}

#[test]
fn declared_arguments_are_read_and_nothing_else() {
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_customer","arguments":{"note":"x","customer_id":"c-1001","filter":{"team":"eu","deep":{"customer_id":"decoy"}},"limit":20,"open":true,"tags":["customer_id"]}}}"#;
    let inspector = fed_with(
        arguments(&["/customer_id", "/filter/team", "/limit", "/open", "/absent"]),
        body,
    )
    .expect("accepted");
    let args = called_with(inspector.seen());
    assert_eq!(
        serde_json::Value::Object(args.into_iter().collect()),
        serde_json::json!({"/customer_id": "c-1001", "/filter/team": "eu", "/limit": 20, "/open": true})
    );
    // The call is known as soon as every declared argument has passed, not before.
    let early = fed_with(
        arguments(&["/customer_id"]),
        br#"{"method":"tools/call","params":{"name":"lookup_customer","arguments":{"customer_id":"c-1"#,
    )
    .expect("accepted");
    assert_eq!(early.seen(), Seen::NeedMore);
    let done = fed_with(
        arguments(&["/customer_id"]),
        br#"{"method":"tools/call","params":{"name":"lookup_customer","arguments":{"customer_id":"c-1","#,
    )
    .expect("accepted");
    assert_eq!(called_with(done.seen())["/customer_id"], "c-1");
    // Other methods are not held back for arguments.
    let list =
        fed_with(arguments(&["/customer_id"]), br#"{"method":"tools/list","#).expect("accepted");
    assert_eq!(list.seen(), call("tools/list", None));
}

#[test]
fn a_declared_argument_split_across_chunks_reads_the_same() {
    let body = br#"{"method":"tools/call","params":{"arguments":{"n":-12.5,"customer_id":"c-\u0031"},"name":"t"}}"#;
    for split in 1..body.len() {
        let mut inspector = arguments(&["/customer_id", "/n"]);
        inspector.feed(&body[..split]).expect("first part");
        inspector.feed(&body[split..]).expect("second part");
        let args = called_with(inspector.seen());
        assert_eq!(args["/customer_id"], "c-1", "split at {split}");
        assert_eq!(args["/n"], -12.5, "split at {split}");
    }
}

#[test]
fn arguments_too_long_twice_or_not_scalar_are_refused() {
    let long = "x".repeat(MAX_ARGUMENT_BYTES + 1);
    let refused = |pointers: &[&str], body: &str| {
        let refusal = fed_with(arguments(pointers), body.as_bytes())
            .and_then(|mut i| i.finish().map(|()| i))
            .expect_err(body);
        refusal.0
    };
    let over = refused(
        &["/customer_id"],
        &format!(
            r#"{{"method":"tools/call","params":{{"name":"t","arguments":{{"customer_id":"{long}"}}}}}}"#
        ),
    );
    assert!(over.contains("longer than 256 bytes"), "{over}");
    let twice = refused(
        &["/customer_id"],
        r#"{"method":"tools/call","params":{"name":"t","arguments":{"customer_id":"c-1","customer_id":"c-2"}}}"#,
    );
    assert!(twice.contains("twice"), "{twice}");
    for body in [
        // The object on the way given twice: a server reads the second.
        r#"{"method":"tools/call","params":{"name":"t","arguments":{"filter":{"team":"eu"},"filter":{"team":"us"}}}}"#,
        r#"{"method":"tools/call","params":{"name":"t","arguments":{"filter":{"team":"eu"}},"arguments":{}}}"#,
        // A key a case-insensitive server reads as the declared one.
        r#"{"method":"tools/call","params":{"name":"t","arguments":{"filter":{"team":"eu","TEAM":"us"}}}}"#,
        r#"{"method":"tools/call","params":{"name":"t","Arguments":{"filter":{"team":"us"}}}}"#,
        // Not a scalar, or a number parsers read differently.
        r#"{"method":"tools/call","params":{"name":"t","arguments":{"filter":{"team":["eu"]}}}}"#,
        r#"{"method":"tools/call","params":{"name":"t","arguments":{"filter":{"team":12345678901234567890}}}}"#,
        r#"{"method":"tools/call","params":{"name":"t","arguments":{"filter":{"team":1234567890123456789012345678901234}}}}"#,
    ] {
        refused(&["/filter/team"], body);
    }
    // Numbers within reach of every parser are read.
    let fine = fed_with(
        arguments(&["/n"]),
        br#"{"method":"tools/call","params":{"name":"t","arguments":{"n":9007199254740991}}}"#,
    )
    .expect("accepted");
    assert_eq!(called_with(fine.seen())["/n"], 9_007_199_254_740_991_u64);
}

#[test]
fn an_argument_after_the_decision_is_refused() {
    let mut inspector = arguments(&["/customer_id"]);
    inspector
        .feed(br#"{"method":"tools/call","params":{"name":"t","arguments":{"pad":"xxxx","#)
        .expect("accepted");
    let decided = inspector.decide();
    assert_eq!(
        decided,
        Some(Call::Mcp(Mcp {
            tool: Some("t".into()),
            ..mcp("tools/call")
        }))
    );
    assert!(inspector.feed(br#""customer_id":"c-2"}}}"#).is_err());
}

#[test]
fn argument_pointers_are_validated() {
    let parse = |p: &[&str]| {
        ArgumentPointers::parse(&p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    };
    assert!(parse(&["/customer_id", "/a~1b/c~0d"]).is_ok());
    for bad in [
        &["customer_id"][..],
        &["/a", "/a"],
        &["/a", "/a/b"],
        &["/a~2"],
        &["/1/2/3/4/5/6/7/8/9"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
    let many: Vec<String> = (0..=MAX_ARGUMENTS).map(|i| format!("/a{i}")).collect();
    assert!(ArgumentPointers::parse(&many).is_err());
    // `~1` is a slash inside a key.
    let inspector = fed_with(
        Inspector::for_protocol(&Protocol::Mcp(parse(&["/a~1b"]).expect("valid"))),
        br#"{"method":"tools/call","params":{"name":"t","arguments":{"a/b":"x"}}}"#,
    )
    .expect("accepted");
    assert_eq!(called_with(inspector.seen())["/a~1b"], "x");
}

#[test]
fn prompts_and_resources_are_read_by_name_and_uri() {
    let prompt = fed(br#"{"method":"prompts/get","params":{"name":"triage_summary"}}"#);
    assert_eq!(
        prompt.seen(),
        Seen::Call(Call::Mcp(Mcp {
            prompt: Some("triage_summary".into()),
            ..mcp("prompts/get")
        }))
    );
    let resource = fed(br#"{"method":"resources/read","params":{"uri":"crm://customers/c-1"}}"#);
    assert_eq!(
        resource.seen(),
        Seen::Call(Call::Mcp(Mcp {
            resource: Some("crm://customers/c-1".into()),
            ..mcp("resources/read")
        }))
    );
    let mut twice = Inspector::new();
    assert!(
        twice
            .feed(br#"{"method":"resources/read","params":{"uri":"a","uri":"b"}}"#)
            .is_err()
    );
}

#[test]
fn a2a_calls_are_read_by_method_and_skill() {
    let a2a = || Inspector::for_protocol(&Protocol::A2a);
    let send = br#"{"id":"1","jsonrpc":"2.0","method":"message/send","params":{"message":{"kind":"message","messageId":"m","metadata":{"skill":"summarize"},"parts":[{"kind":"text","text":"hi"}],"role":"user"}}}"#;
    let inspector = fed_with(a2a(), send).expect("accepted");
    assert_eq!(
        inspector.seen(),
        Seen::Call(Call::A2a(A2a {
            method: "message/send".into(),
            skill: Some("summarize".into())
        }))
    );
    // Known once the skill has passed, before the message's parts.
    let early = fed_with(a2a(), &send[..send.len() - 40]).expect("accepted");
    assert!(matches!(early.seen(), Seen::Call(_)));
    let cancel =
        fed_with(a2a(), br#"{"method":"tasks/cancel","params":{"id":"t-1"}}"#).expect("accepted");
    assert_eq!(
        cancel.seen(),
        Seen::Call(Call::A2a(A2a {
            method: "tasks/cancel".into(),
            skill: None
        }))
    );
    // Only a message names a skill: one in another method's body, before its method or after,
    // is no part of the call (it was, when it came before the method: the decision then
    // depended on where in the body it came).
    for body in [
        &br#"{"params":{"message":{"metadata":{"skill":"s"}}},"method":"tasks/get"}"#[..],
        br#"{"method":"tasks/get","params":{"message":{"metadata":{"skill":"s"}}}}"#,
    ] {
        let read = fed_with(a2a(), body).expect("accepted");
        assert_eq!(
            read.seen(),
            Seen::Call(Call::A2a(A2a {
                method: "tasks/get".into(),
                skill: None
            })),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    for body in [
        &br#"{"method":"message/send","params":{"message":{"metadata":{"skill":7}}}}"#[..],
        br#"{"method":"message/send","params":{"message":{"metadata":{"skill":"a","Skill":"b"}}}}"#,
        br#"{"method":"message/send","params":{"message":{"metadata":{"skill":"a"}},"message":{}}}"#,
    ] {
        assert!(fed_with(a2a(), body).is_err(), "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn what_a_lenient_server_would_read_differently_is_refused() {
    for (pointers, body) in [
        // A second value after the call: a server reading a stream of values acts on it.
        (
            &["/customer_id"][..],
            r#"{"method":"tools/list"} {"method":"tools/call","params":{"name":"refund"}}"#,
        ),
        // The object on the way given as a string (FastMCP parses JSON strings) or an array.
        (
            &["/filter/team"],
            r#"{"method":"tools/call","params":{"name":"t","arguments":{"filter":"{\"team\":\"us\"}"}}}"#,
        ),
        (
            &["/filter/team"],
            r#"{"method":"tools/call","params":{"name":"t","arguments":{"filter":[{"team":"us"}]}}}"#,
        ),
        (
            &["/filter/team"],
            r#"{"method":"tools/call","params":{"name":"t","arguments":{"filter":7}}}"#,
        ),
        // Go folds `ı` and `İ` to `I`: a Go server takes the last of these for customer_id.
        (
            &["/customer_id"],
            r#"{"method":"tools/call","params":{"name":"t","arguments":{"customer_id":"c-1","customer_ıd":"c-2"}}}"#,
        ),
        // 2^53 + 1: JavaScript reads 2^53.
        (
            &["/n"],
            r#"{"method":"tools/call","params":{"name":"t","arguments":{"n":9007199254740993}}}"#,
        ),
    ] {
        let refused = fed_with(arguments(pointers), body.as_bytes())
            .and_then(|mut inspector| inspector.finish());
        assert!(refused.is_err(), "{body}");
    }
    // A key too long to compare, next to a declared argument, cannot be told apart from it.
    let long_key = "\\u0063".repeat(100);
    let body = format!(
        r#"{{"method":"tools/call","params":{{"name":"t","arguments":{{"customer_id":"a","{long_key}":"b"}}}}}}"#
    );
    assert!(fed_with(arguments(&["/customer_id"]), body.as_bytes()).is_err());
    // An escaped value of 256 characters or fewer is read, however long its escapes.
    let escaped = "\\u00e9".repeat(128);
    let body = format!(
        r#"{{"method":"tools/call","params":{{"name":"t","arguments":{{"customer_id":"{escaped}"}}}}}}"#
    );
    let inspector = fed_with(arguments(&["/customer_id"]), body.as_bytes()).expect("accepted");
    assert_eq!(
        called_with(inspector.seen())["/customer_id"],
        "é".repeat(128)
    );
    // Array indices are not pointers Deputy follows.
    assert!(ArgumentPointers::parse(&["/ids/0".to_owned()]).is_err());
}
