//! Orgs and memberships.

use keel_testkit::{Backend, TestApp, both, json};

async fn orgs_and_members(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let taken = app
        .post("/api/v1/orgs", &owner, json!({"slug": "acme", "name": "Again"}))
        .await;
    assert_eq!((taken.status.as_u16(), taken.code()), (409, "slug_taken"));
    let bad = app
        .post("/api/v1/orgs", &owner, json!({"slug": "-Bad Slug", "name": "x"}))
        .await;
    assert_eq!(bad.code(), "validation_failed");

    let (member_id, member) = app.member(&owner, "acme", "m@example.com", "member").await;
    let orgs = app.get("/api/v1/orgs", &member).await;
    assert_eq!(orgs.body["items"][0]["org"]["slug"], "acme");
    assert_eq!(orgs.body["items"][0]["role"], "member");

    let members = app.get("/api/v1/orgs/acme/members", &member).await;
    assert_eq!(members.body["items"].as_array().unwrap().len(), 2);

    // A member cannot manage members; the owner can change roles.
    let denied = app
        .patch(
            &format!("/api/v1/orgs/acme/members/{member_id}"),
            &member,
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(denied.code(), "forbidden");
    let promoted = app
        .patch(
            &format!("/api/v1/orgs/acme/members/{member_id}"),
            &owner,
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(promoted.status, 200, "{}", promoted.text);
    assert_eq!(promoted.body["role"], "admin");
    // An admin cannot grant owner.
    let grant = app
        .patch(
            &format!("/api/v1/orgs/acme/members/{member_id}"),
            &member,
            json!({"role": "owner"}),
        )
        .await;
    assert_eq!(grant.code(), "invalid_role");

    // The last owner cannot leave or be demoted.
    let me = app.get("/api/v1/auth/me", &owner).await;
    let owner_id = me.body["user"]["id"].as_str().unwrap().to_string();
    let demote = app
        .patch(
            &format!("/api/v1/orgs/acme/members/{owner_id}"),
            &owner,
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!((demote.status.as_u16(), demote.code()), (409, "last_owner"));
    let leave = app
        .delete(&format!("/api/v1/orgs/acme/members/{owner_id}"), &owner)
        .await;
    assert_eq!(leave.code(), "last_owner");

    let again = app
        .post(
            "/api/v1/orgs/acme/members",
            &owner,
            json!({"email": "m@example.com", "role": "member"}),
        )
        .await;
    assert_eq!(again.code(), "already_member");
    let missing = app
        .post(
            "/api/v1/orgs/acme/members",
            &owner,
            json!({"email": "ghost@example.com", "role": "member"}),
        )
        .await;
    assert_eq!(missing.status, 404);

    // Members may leave by themselves.
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/members/{member_id}"), &member)
            .await
            .status,
        204
    );
    assert_eq!(
        app.get("/api/v1/orgs/acme/projects", &member).await.status,
        404,
        "a former member sees nothing"
    );
}

async fn member_lists_are_paginated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    for n in 0..4 {
        app.member(&owner, "acme", &format!("u{n}@example.com"), "viewer").await;
    }
    let mut seen = vec![];
    let mut path = "/api/v1/orgs/acme/members?limit=2".to_string();
    loop {
        let page = app.get(&path, &owner).await;
        assert_eq!(page.status, 200, "{}", page.text);
        for item in page.body["items"].as_array().unwrap() {
            seen.push(item["user"]["email"].as_str().unwrap().to_string());
        }
        match page.body["next"].as_str() {
            Some(next) => path = format!("/api/v1/orgs/acme/members?limit=2&after={next}"),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5);
}

both!(orgs_and_members, member_lists_are_paginated);
