module github.com/conveyor-ci/conveyor/plugins/ssh-launcher

go 1.26.8
