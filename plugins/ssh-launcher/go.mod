module github.com/conveyor-ci/conveyor/plugins/ssh-launcher

go 1.26.8

require github.com/conveyor-ci/conveyor/sdk v0.0.0-00010101000000-000000000000

require (
	github.com/kr/fs v0.1.0 // indirect
	github.com/pkg/sftp v1.13.12 // indirect
	golang.org/x/crypto v0.57.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
)

replace github.com/conveyor-ci/conveyor/sdk => ../../sdk
